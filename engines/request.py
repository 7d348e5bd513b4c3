"""What a Triton request to an engine model carries, parsed and validated."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

from kvmesh.engine_wire import INPUT_IDS, KV_TRANSFER_PARAMS, RESPONSE_INTERVAL_MS, SAMPLING_PARAMS, TRACE_PARAMETERS
from kvmesh.errors import InvalidArgument
from kvmesh.sampling import SamplingParams
from kvmesh.sampling import check as check_sampling


class BadRequest(ValueError):
    """The request is malformed; the message says which input and why."""


@dataclass
class EngineRequest:
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams
    # W3C trace context (traceparent/tracestate) carried from the gateway.
    trace_headers: dict[str, str] = field(default_factory=dict)
    # Decode instances: what the prefill instance returned ({}: prefill here). None elsewhere.
    kv_transfer_params: dict[str, Any] | None = None
    # After the first token, responses come at most this often (the tokens between ride on the
    # next): a caller that wants only the whole answer spares a response per token.
    response_interval_s: float = 0.0


def parse(
    request_id: str,
    input_ids: np.ndarray | None,
    sampling_json: bytes | str | None,
    parameters: dict[str, Any],
    *,
    max_model_len: int,
    vocab_size: int,
    kv_transfer_json: bytes | str | None = None,
    role: str = "aggregated",
) -> EngineRequest:
    if input_ids is None or input_ids.size == 0:
        raise BadRequest(f"{INPUT_IDS}: required, at least one token id")
    ids = input_ids.reshape(-1).astype(np.int64)
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise BadRequest(f"{INPUT_IDS}: token ids must be in [0, {vocab_size})")
    sampling = _sampling_params(sampling_json, ids.size, max_model_len)
    trace_headers = {k: str(v) for k, v in parameters.items() if k in TRACE_PARAMETERS}
    kv_transfer = _kv_transfer_params(kv_transfer_json, role)
    interval_ms = _response_interval_ms(parameters.get(RESPONSE_INTERVAL_MS, 0))
    return EngineRequest(request_id, ids.tolist(), sampling, trace_headers, kv_transfer, interval_ms / 1000)


def _sampling_params(raw: bytes | str | None, prompt_tokens: int, max_model_len: int) -> SamplingParams:
    """The gateway's own rules (kvmesh/sampling.py), so a request it sent is never refused here."""
    try:
        sampling = msgspec.json.decode(raw, type=SamplingParams) if raw else SamplingParams()
        check_sampling(msgspec.structs.asdict(sampling), prompt_tokens, max_model_len)
    except msgspec.ValidationError as e:
        raise BadRequest(f"{SAMPLING_PARAMS}: {e}") from None
    except msgspec.DecodeError as e:
        raise BadRequest(f"{SAMPLING_PARAMS}: not JSON ({e})") from None
    except InvalidArgument as e:
        raise BadRequest(f"{SAMPLING_PARAMS}: {e.message}") from None
    return sampling


MAX_RESPONSE_INTERVAL_MS = 60_000


def _response_interval_ms(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= MAX_RESPONSE_INTERVAL_MS:
        raise BadRequest(f"{RESPONSE_INTERVAL_MS}: a number of milliseconds in [0, {MAX_RESPONSE_INTERVAL_MS}]")
    return float(value)


def _kv_transfer_params(raw: bytes | str | None, role: str) -> dict[str, Any] | None:
    if role != "decode":
        if raw is not None:
            raise BadRequest(f"{KV_TRANSFER_PARAMS}: only decode instances take it (this one is {role})")
        return None
    if raw is None:
        raise BadRequest(f"{KV_TRANSFER_PARAMS}: required on a decode instance ({{}} asks it to prefill locally)")
    try:
        params = json.loads(raw)
    except json.JSONDecodeError as e:
        raise BadRequest(f"{KV_TRANSFER_PARAMS}: not JSON ({e.msg})") from None
    if not isinstance(params, dict):
        raise BadRequest(f"{KV_TRANSFER_PARAMS}: must be a JSON object")
    return params
