"""Checks a request's sampling parameters against the model and turns them into the engine's
`sampling_params` JSON. One place for both fronts (gRPC and OpenAI HTTP)."""

from __future__ import annotations

from dataclasses import dataclass, field

from kvmesh.errors import InvalidArgument

MAX_STOP_STRINGS = 16


@dataclass
class Sampling:
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


def _check_range(name: str, value: float | None, low: float, high: float, low_open: bool = False) -> None:
    if value is None:
        return
    if value < low or value > high or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise InvalidArgument(f"{name} must be in {bracket}{low}, {high}], got {value}", param=name)


def engine_sampling(
    s: Sampling, prompt_tokens: int, max_model_len: int, default_max_tokens: int, model_defaults: dict | None = None
) -> dict:
    """`model_defaults` (the model's generation_config) fill what the request leaves unset."""
    if prompt_tokens == 0:
        raise InvalidArgument("the prompt is empty", param="prompt")
    room = max_model_len - prompt_tokens
    if room < 1:
        raise InvalidArgument(
            f"the prompt has {prompt_tokens} tokens; this model's context length is {max_model_len}",
            param="messages",
        )
    if s.max_tokens is not None:
        if s.max_tokens < 1:
            raise InvalidArgument(f"max_tokens must be at least 1, got {s.max_tokens}", param="max_tokens")
        if s.max_tokens > room:
            raise InvalidArgument(
                f"max_tokens ({s.max_tokens}) + the prompt ({prompt_tokens} tokens) exceed this model's "
                f"context length {max_model_len}; at most {room} tokens fit",
                param="max_tokens",
            )
    _check_range("temperature", s.temperature, 0.0, 2.0)
    _check_range("top_p", s.top_p, 0.0, 1.0, low_open=True)
    _check_range("presence_penalty", s.presence_penalty, -2.0, 2.0)
    _check_range("frequency_penalty", s.frequency_penalty, -2.0, 2.0)
    if s.top_k is not None and s.top_k < -1:
        raise InvalidArgument(f"top_k must be -1 or 0 (off) or positive, got {s.top_k}", param="top_k")
    if len(s.stop) > MAX_STOP_STRINGS:
        raise InvalidArgument(f"stop: at most {MAX_STOP_STRINGS} strings", param="stop")
    out: dict = {"max_tokens": s.max_tokens if s.max_tokens is not None else min(default_max_tokens, room)}
    for name in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty"):
        value = getattr(s, name)
        if value is not None:
            out[name] = value
    if s.top_k is not None:
        out["top_k"] = max(s.top_k, 0)
    if s.stop:
        out["stop"] = s.stop
    if s.stop_token_ids:
        out["stop_token_ids"] = s.stop_token_ids
    if s.ignore_eos:
        out["ignore_eos"] = True
    for name, value in (model_defaults or {}).items():
        out.setdefault(name, value)
    return out
