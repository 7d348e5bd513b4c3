"""Sampling parameters, one definition for both ends of the engine wire: which values a request may
ask for (`check`) and the `sampling_params` JSON an engine reads (`SamplingParams`). The gateway
checks a client's values here and sends a SamplingParams; an engine decodes the tensor into one
and runs the same check, so it accepts exactly what the gateway sends."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from kvmesh.errors import InvalidArgument

MAX_STOP_STRINGS = 16
# name → (low, high, low_open): the value must be in [low, high], or (low, high] if low_open.
RANGES = {
    "temperature": (0.0, 2.0, False),
    "top_p": (0.0, 1.0, True),
    "presence_penalty": (-2.0, 2.0, False),
    "frequency_penalty": (-2.0, 2.0, False),
}


class SamplingParams(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The `sampling_params` tensor (JSON): a field left out takes its default here, so only
    what differs is sent. Unknown fields are refused so that typos do not pass silently."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off (-1, vLLM's and OpenAI's "off", becomes 0)
    seed: int | None = None
    stop: list[str] = []
    stop_token_ids: list[int] = []
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    def __post_init__(self) -> None:
        if self.top_k == -1:
            self.top_k = 0


def check(values: Mapping[str, Any], prompt_tokens: int, max_model_len: int) -> None:
    """Raises InvalidArgument naming the first field out of bounds; a field absent or None is
    unset. max_tokens must also fit beside the prompt in the context."""
    max_tokens = values.get("max_tokens")
    if max_tokens is not None:
        if max_tokens < 1:
            raise InvalidArgument(f"max_tokens must be at least 1, got {max_tokens}", param="max_tokens")
        room = max_model_len - prompt_tokens
        if max_tokens > room:
            raise InvalidArgument(
                f"max_tokens ({max_tokens}) + the prompt ({prompt_tokens} tokens) exceed this model's "
                f"context length {max_model_len}; at most {room} tokens fit",
                param="max_tokens",
            )
    for name, (low, high, low_open) in RANGES.items():
        value = values.get(name)
        if value is not None and (not low <= value <= high or (low_open and value == low)):  # NaN too
            bracket = "(" if low_open else "["
            raise InvalidArgument(f"{name} must be in {bracket}{low}, {high}], got {value}", param=name)
    top_k = values.get("top_k")
    if top_k is not None and top_k < -1:
        raise InvalidArgument(f"top_k must be -1 or 0 (off) or positive, got {top_k}", param="top_k")
    if len(values.get("stop") or ()) > MAX_STOP_STRINGS:
        raise InvalidArgument(f"stop: at most {MAX_STOP_STRINGS} strings", param="stop")
