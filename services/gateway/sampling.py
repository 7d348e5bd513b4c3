"""Turns a request's sampling parameters into the engine's SamplingParams, checked against the
model (kvmesh/sampling.py holds the rules both the gateway and the engines apply). One place for
both fronts (gRPC and OpenAI HTTP)."""

from __future__ import annotations

from dataclasses import dataclass, field

from kvmesh import sampling
from kvmesh.errors import InvalidArgument
from kvmesh.sampling import SamplingParams


@dataclass
class Sampling:
    """What the request asked for; None (or empty) is unset."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


def engine_sampling(
    s: Sampling, prompt_tokens: int, max_model_len: int, default_max_tokens: int, model_defaults: dict | None = None
) -> SamplingParams:
    """`model_defaults` (the model's generation_config) fill what the request leaves unset."""
    if prompt_tokens == 0:
        raise InvalidArgument("the prompt is empty", param="prompt")
    room = max_model_len - prompt_tokens
    if room < 1:
        raise InvalidArgument(
            f"the prompt has {prompt_tokens} tokens; this model's context length is {max_model_len}",
            param="messages",
        )
    given = {name: value for name, value in vars(s).items() if value is not None}
    sampling.check(given, prompt_tokens, max_model_len)
    return SamplingParams(**{"max_tokens": min(default_max_tokens, room), **(model_defaults or {}), **given})
