"""The engine wire: every name and message shape that crosses between the gateway and a Triton
engine model, defined once for both sides (services/gateway/engine_client.py and engine_mux.py;
engines/triton_model.py and mux.py) and for the model configs (kvmesh/repo/interface.py).
The mux protocol is specified in docs/mux.md; `sampling_params` is kvmesh.sampling.SamplingParams.
"""

from __future__ import annotations

from typing import Any

import msgspec

# Input tensors.
INPUT_IDS = "input_ids"
SAMPLING_PARAMS = "sampling_params"
KV_TRANSFER_PARAMS = "kv_transfer_params"  # an input of decode instances, an output of prefill ones
MUX_REQUESTS = "mux_requests"  # several requests on a mux in one Triton request (MuxRequest)
# Output tensors: a request's own responses carry its delta as tensors; a mux's carry MUX_DELTAS.
OUTPUT_IDS = "output_ids"
FINISH_REASON = "finish_reason"
PROMPT_TOKENS = "prompt_tokens"
CACHED_TOKENS = "cached_tokens"
MUX_DELTAS = "mux_deltas"

# Request parameters.
TRACE_PARAMETERS = ("traceparent", "tracestate")  # W3C trace context
RESPONSE_INTERVAL_MS = "response_interval_ms"
MUX_OPEN = "mux_open"  # opens a mux with this id
MUX = "mux"  # the request runs on this mux
MUX_CANCEL = "mux_cancel"  # cancels this request on the mux named by MUX
# The model ends a mux with no request in flight this long; a client stops sending on one sooner.
MUX_IDLE_CLOSE_S = 5.0


class EngineDelta(msgspec.Struct):
    """A request's new output since its previous response; finish_reason ("stop", "length" or
    "abort") and the counts are final on the last one."""

    token_ids: list[int]
    finish_reason: str | None
    prompt_tokens: int
    cached_tokens: int
    # Prefill instances, on the last delta: how a decode instance fetches this request's KV.
    kv_transfer_params: dict[str, Any] | None = None


class MuxDelta(msgspec.Struct, array_like=True):
    """One request's delta in a mux batch: on the wire the array
    [request_id, token_ids, finish_reason, prompt_tokens, cached_tokens, kv_transfer_params]."""

    request_id: str
    token_ids: list[int]
    finish_reason: str | None
    prompt_tokens: int
    cached_tokens: int
    kv_transfer_params: dict[str, Any] | None

    @classmethod
    def of(cls, request_id: str, d: EngineDelta) -> MuxDelta:
        return cls(request_id, d.token_ids, d.finish_reason, d.prompt_tokens, d.cached_tokens, d.kv_transfer_params)

    def delta(self) -> EngineDelta:
        return EngineDelta(
            self.token_ids, self.finish_reason, self.prompt_tokens, self.cached_tokens, self.kv_transfer_params
        )


class MuxError(msgspec.Struct, array_like=True):
    """A request that failed, in a mux batch: on the wire [request_id, message]."""

    request_id: str
    message: str


MuxEntry = MuxDelta | MuxError


class MuxRequest(msgspec.Struct, array_like=True):
    """One request of several sent on a mux as one Triton request: in the MUX_REQUESTS payload the
    msgpack array [request_id, input_ids, sampling_params, kv_transfer_params, parameters], the
    same values as a request alone carries in its tensors and parameters."""

    request_id: str
    input_ids: bytes  # INT32 little-endian, as the input_ids tensor's content
    sampling_params: bytes  # the sampling_params tensor's JSON
    kv_transfer_params: bytes | None  # the kv_transfer_params tensor's JSON (decode instances)
    parameters: dict[str, Any]  # the request parameters: trace context, response_interval_ms


_requests_encoder = msgspec.msgpack.Encoder()
_requests_decoder = msgspec.msgpack.Decoder(list[MuxRequest])


def encode_requests(requests: list[MuxRequest]) -> bytes:
    """The MUX_REQUESTS payload."""
    return _requests_encoder.encode(requests)


def decode_requests(payload: bytes) -> list[MuxRequest]:
    """Raises msgspec.DecodeError (or ValidationError) for a payload that is not a list of them."""
    return _requests_decoder.decode(payload)


_encoder = msgspec.json.Encoder()
_deltas_only = msgspec.json.Decoder(list[MuxDelta] | None)
_any = msgspec.json.Decoder(list[list[Any]])


def encode_batch(batch: list[MuxEntry] | None) -> bytes:
    """The MUX_DELTAS payload: a JSON list of entries; None (JSON null) is a mux's last one."""
    return _encoder.encode(batch)


def decode_batch(payload: bytes) -> list[MuxEntry] | None:
    """A batch is deltas only but for a failed request now and then; one holding an error is read
    again entry by entry, told apart by length (msgspec tells arrays apart only by a tag, and the
    wire has none)."""
    try:
        return _deltas_only.decode(payload)
    except msgspec.ValidationError:
        return [msgspec.convert(e, MuxError if len(e) == 2 else MuxDelta) for e in _any.decode(payload)]
