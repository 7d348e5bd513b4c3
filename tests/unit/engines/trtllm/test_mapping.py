"""The TensorRT-LLM boundary without TensorRT-LLM: sampling parameters, the context phase's
DisaggregatedParams as kv_transfer_params JSON and back, and KV-cache events in vLLM's format."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import pytest

from engines.request import BadRequest
from engines.trtllm import mapping
from kvmesh import kv_events
from kvmesh.sampling import SamplingParams


@dataclass(slots=True, kw_only=True)
class DisaggregatedParams:
    """The fields of tensorrt_llm.llmapi.DisaggregatedParams that a context phase fills."""

    request_type: str | None = None
    first_gen_tokens: list[int] | None = None
    ctx_request_id: int | None = None
    opaque_state: bytes | None = None
    draft_tokens: list[int] | None = None


def test_sampling_kwargs_name_trtllm_fields():
    spec = SamplingParams(max_tokens=8, temperature=0.0, top_k=0, seed=3, stop=["\n"], stop_token_ids=[2])
    kwargs = mapping.sampling_kwargs(spec, end_id=2, pad_id=0)
    assert kwargs["max_tokens"] == 8 and kwargs["seed"] == 3 and kwargs["end_id"] == 2 and kwargs["pad_id"] == 0
    assert kwargs["top_k"] is None and kwargs["stop"] == ["\n"] and kwargs["detokenize"] is True
    assert mapping.sampling_kwargs(SamplingParams(), 2, 0)["detokenize"] is False


def test_context_params_survive_json_and_become_generation_only():
    context = DisaggregatedParams(
        request_type="context_only", first_gen_tokens=[42], ctx_request_id=7, opaque_state=b"\x00\xffstate"
    )
    wire = json.loads(json.dumps(mapping.encode_context(context)))
    assert wire == {"tensorrtllm": {"first_gen_tokens": [42], "ctx_request_id": 7,
                                    "opaque_state": base64.b64encode(b"\x00\xffstate").decode()}}  # fmt: skip
    generation = DisaggregatedParams(**mapping.decode_generation(wire))
    assert generation.request_type == "generation_only"
    assert (generation.first_gen_tokens, generation.ctx_request_id, generation.opaque_state) == (
        [42], 7, b"\x00\xffstate"
    )  # fmt: skip


@pytest.mark.parametrize(
    "params, words",
    [
        ({"remote_engine_id": "vllm"}, "expected a 'tensorrtllm' object"),
        ({"tensorrtllm": {"first_gen_tokens": [1], "ctx_request_id": 7}}, "missing opaque_state"),
        ({"tensorrtllm": {"first_gen_tokens": [], "ctx_request_id": 7, "opaque_state": ""}}, "first_gen_tokens"),
        ({"tensorrtllm": {"first_gen_tokens": [1], "ctx_request_id": "7", "opaque_state": ""}}, "ctx_request_id"),
        ({"tensorrtllm": {"first_gen_tokens": [1], "ctx_request_id": 7, "opaque_state": "%%"}}, "not base64"),
    ],
)
def test_wrong_transfer_params_are_refused_by_name(params, words):
    with pytest.raises(BadRequest, match=words):
        mapping.decode_generation(params)


def stored_event(blocks, parent=None):
    return {"event_id": 1, "data": {"type": "stored", "parent_hash": parent, "blocks": blocks}, "window_size": 32}


def block(block_hash, ids):
    return {"type": "stored_block", "block_hash": block_hash, "tokens": [{"token_id": t} for t in ids]}


def test_stored_events_become_vllm_block_stored_with_full_blocks_only():
    event = stored_event([block(11, [1, 2, 3, 4]), block(12, [5, 6, 7, 8]), block(13, [9])], parent=10)
    out = mapping.translate_event(event, block_size=4)
    assert isinstance(out, kv_events.BlockStored)
    assert (out.block_hashes, out.parent_block_hash, out.token_ids, out.block_size) == (
        [11, 12], 10, [1, 2, 3, 4, 5, 6, 7, 8], 4
    )  # fmt: skip
    # kvindex decodes it like any vLLM event.
    frames = kv_events.encode(b"", 0, kv_events.EventBatch(1.0, [out]))
    assert kv_events.decode(frames)[1].events == [out]


@pytest.mark.parametrize(
    "event, expected",
    [
        ({"data": {"type": "removed", "block_hashes": [11, 12]}}, kv_events.BlockRemoved([11, 12], "GPU")),
        ({"data": {"type": "created", "num_blocks_per_cache_level": [100, 0]}}, None),
        ({"data": {"type": "updated", "block_hash": 11}}, None),
        (stored_event([block(13, [9])]), None),  # only a partial block
    ],
)
def test_other_events(event, expected):
    assert mapping.translate_event(event, block_size=4) == expected
