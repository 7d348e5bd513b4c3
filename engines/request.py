"""What a Triton request to an engine model carries, parsed and validated."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class SamplingSpec(BaseModel):
    """The `sampling_params` input (JSON). Unknown keys are refused so typos do not pass silently."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)  # 0: off
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)
    stop_token_ids: list[int] = Field(default_factory=list)
    ignore_eos: bool = False
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)


class BadRequest(ValueError):
    """The request is malformed; the message says which input and why."""


@dataclass
class EngineRequest:
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingSpec
    # W3C trace context (traceparent/tracestate) carried from the gateway.
    trace_headers: dict[str, str] = field(default_factory=dict)
    # Decode instances: what the prefill instance returned ({}: prefill here). None elsewhere.
    kv_transfer_params: dict[str, Any] | None = None
    # After the first token, responses come at most this often (the tokens between ride on the
    # next): a caller that wants only the whole answer spares a response per token.
    response_interval_s: float = 0.0


@dataclass
class EngineDelta:
    """New output since the previous delta; finish_reason is set on the last one."""

    token_ids: list[int]
    finish_reason: str | None
    prompt_tokens: int
    cached_tokens: int
    # Prefill instances, on the last delta: how a decode instance fetches this request's KV.
    kv_transfer_params: dict[str, Any] | None = None


def parse(
    request_id: str,
    input_ids: np.ndarray | None,
    sampling_json: bytes | str | None,
    parameters_json: str | None,
    *,
    max_model_len: int,
    vocab_size: int,
    kv_transfer_json: bytes | str | None = None,
    role: str = "aggregated",
) -> EngineRequest:
    if input_ids is None or input_ids.size == 0:
        raise BadRequest("input_ids: required, at least one token id")
    ids = input_ids.reshape(-1).astype(np.int64)
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise BadRequest(f"input_ids: token ids must be in [0, {vocab_size})")
    try:
        raw = json.loads(sampling_json) if sampling_json else {}
        sampling = SamplingSpec.model_validate(raw)
    except json.JSONDecodeError as e:
        raise BadRequest(f"sampling_params: not JSON ({e.msg})") from None
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BadRequest(f"sampling_params.{where}: {first['msg']}") from None
    if ids.size + sampling.max_tokens > max_model_len:
        raise BadRequest(
            f"prompt ({ids.size} tokens) + max_tokens ({sampling.max_tokens}) exceeds "
            f"the context length {max_model_len}"
        )
    parameters = json.loads(parameters_json) if parameters_json else {}
    trace_headers = {k: str(v) for k, v in parameters.items() if k in ("traceparent", "tracestate")}
    kv_transfer = _kv_transfer_params(kv_transfer_json, role)
    interval_ms = _response_interval_ms(parameters.get("response_interval_ms", 0))
    return EngineRequest(request_id, ids.tolist(), sampling, trace_headers, kv_transfer, interval_ms / 1000)


MAX_RESPONSE_INTERVAL_MS = 60_000


def _response_interval_ms(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= MAX_RESPONSE_INTERVAL_MS:
        raise BadRequest(f"response_interval_ms: a number of milliseconds in [0, {MAX_RESPONSE_INTERVAL_MS}]")
    return float(value)


def _kv_transfer_params(raw: bytes | str | None, role: str) -> dict[str, Any] | None:
    if role != "decode":
        if raw is not None:
            raise BadRequest(f"kv_transfer_params: only decode instances take it (this one is {role})")
        return None
    if raw is None:
        raise BadRequest("kv_transfer_params: required on a decode instance ({} asks it to prefill locally)")
    try:
        params = json.loads(raw)
    except json.JSONDecodeError as e:
        raise BadRequest(f"kv_transfer_params: not JSON ({e.msg})") from None
    if not isinstance(params, dict):
        raise BadRequest("kv_transfer_params: must be a JSON object")
    return params
