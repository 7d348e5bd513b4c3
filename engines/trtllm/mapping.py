"""What crosses the TensorRT-LLM boundary, as pure functions (unit-tested without TensorRT-LLM):
sampling parameters, the context phase's DisaggregatedParams as kv_transfer_params JSON, and
TensorRT-LLM's KV-cache events as vLLM-format events (so kvindex reads every engine alike).

Facts from TensorRT-LLM's LLM API (tensorrt_llm/disaggregated_params.py, sampling_params.py,
_utils.py KVCacheEventSerializer): DisaggregatedParams' opaque_state is raw bytes; stored-block
events carry `block_hash`, `tokens` [{token_id}], and the batch's `parent_hash`.
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

from engines.request import BadRequest
from kvmesh import kv_events
from kvmesh.sampling import SamplingParams

# What a context-only instance hands a generation-only one; every other field is passed through.
CONTEXT_FIELDS = ("first_gen_tokens", "ctx_request_id", "opaque_state")
ENGINE_KEY = "tensorrtllm"


def sampling_kwargs(spec: SamplingParams, end_id: int, pad_id: int) -> dict[str, Any]:
    """tensorrt_llm.SamplingParams(**these). end_id is explicit: kvmesh sends token ids, and the
    LLM API cannot infer it without a tokenizer."""
    return {
        "max_tokens": spec.max_tokens,
        "temperature": spec.temperature,
        "top_p": spec.top_p,
        "top_k": spec.top_k or None,
        "seed": spec.seed,
        "stop": spec.stop or None,
        "stop_token_ids": spec.stop_token_ids or None,
        "ignore_eos": spec.ignore_eos,
        "presence_penalty": spec.presence_penalty,
        "frequency_penalty": spec.frequency_penalty,
        "end_id": end_id,
        "pad_id": pad_id,
        # The gateway detokenizes; the engine's detokenizer runs only for stop strings.
        "detokenize": bool(spec.stop),
    }


def encode_context(params: Any) -> dict[str, Any]:
    """A finished context-only output's DisaggregatedParams → the kv_transfer_params JSON object."""
    fields = {
        f.name: getattr(params, f.name) for f in dataclasses.fields(params) if getattr(params, f.name) is not None
    }
    fields.pop("request_type", None)
    if isinstance(fields.get("opaque_state"), bytes):
        fields["opaque_state"] = base64.b64encode(fields["opaque_state"]).decode()
    return {ENGINE_KEY: fields}


def decode_generation(kv_transfer_params: dict[str, Any]) -> dict[str, Any]:
    """kv_transfer_params from a context instance → DisaggregatedParams(**these) for a
    generation-only request. Refuses what did not come from a TensorRT-LLM context instance."""
    fields = kv_transfer_params.get(ENGINE_KEY)
    if not isinstance(fields, dict):
        raise BadRequest(f"kv_transfer_params: expected a {ENGINE_KEY!r} object from a TensorRT-LLM context instance")
    missing = [name for name in CONTEXT_FIELDS if fields.get(name) is None]
    if missing:
        raise BadRequest(f"kv_transfer_params.{ENGINE_KEY}: missing {', '.join(missing)}")
    tokens = fields["first_gen_tokens"]
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, int) for t in tokens):
        raise BadRequest(f"kv_transfer_params.{ENGINE_KEY}.first_gen_tokens: a non-empty list of token ids")
    if not isinstance(fields["ctx_request_id"], int):
        raise BadRequest(f"kv_transfer_params.{ENGINE_KEY}.ctx_request_id: an integer")
    try:
        opaque = base64.b64decode(fields["opaque_state"], validate=True)
    except (ValueError, TypeError):
        raise BadRequest(f"kv_transfer_params.{ENGINE_KEY}.opaque_state: not base64") from None
    return {**fields, "opaque_state": opaque, "request_type": "generation_only"}


def translate_event(event: dict[str, Any], block_size: int) -> kv_events.Event | None:
    """One TensorRT-LLM KV-cache event → its vLLM-format equivalent, or None for what the index
    does not track (created, updated). Partial blocks are dropped: only full blocks are hashed."""
    data = event.get("data", {})
    kind = data.get("type")
    if kind == "stored":
        hashes, tokens = [], []
        for block in data.get("blocks", []):
            ids = [t["token_id"] for t in block.get("tokens", [])]
            if len(ids) != block_size:
                break  # a partial block ends the chain
            hashes.append(block["block_hash"])
            tokens += ids
        if not hashes:
            return None
        return kv_events.BlockStored(
            block_hashes=hashes,
            parent_block_hash=data.get("parent_hash"),
            token_ids=tokens,
            block_size=block_size,
            lora_id=None,
            medium="GPU",
            lora_name=None,
        )
    if kind == "removed":
        return kv_events.BlockRemoved(block_hashes=list(data.get("block_hashes", [])), medium="GPU")
    return None
