"""vLLM's KV-event wire format (vllm/distributed/kv_events.py), without importing vLLM: kvindex
decodes it, the simulated engine encodes it, byte for byte as vLLM does (a test pins that).

A ZMQ message is `[topic, seq (8-byte big-endian), msgpack(batch)]`; a batch is the array
`[ts, [events]]` (+ dp_rank when set) and each event a map tagged by `type`. Block hashes are
ints (VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES, the default) or bytes.
"""

from __future__ import annotations

import msgspec

EngineHash = int | bytes


class BlockStored(msgspec.Struct, tag=True, omit_defaults=True):
    block_hashes: list[EngineHash]
    parent_block_hash: EngineHash | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None
    # Sent only when set.
    extra_keys: list | None = None
    group_idx: int | None = None


class BlockRemoved(msgspec.Struct, tag=True, omit_defaults=True):
    block_hashes: list[EngineHash]
    medium: str | None
    group_idx: int | None = None


class AllBlocksCleared(msgspec.Struct, tag=True, omit_defaults=True):
    pass


Event = BlockStored | BlockRemoved | AllBlocksCleared


class EventBatch(msgspec.Struct, array_like=True):
    ts: float
    events: list[Event]
    data_parallel_rank: int | None = None


# A replay answer ends with [b"", END_SEQ, b""].
END_SEQ = (-1).to_bytes(8, "big", signed=True)


class BadMessage(ValueError):
    """A message that is not a KV-event batch; dropped, never fatal."""


_decoder = msgspec.msgpack.Decoder(EventBatch)
_encoder = msgspec.msgpack.Encoder()


def encode(topic: bytes, seq: int, batch: EventBatch) -> list[bytes]:
    return [topic, seq.to_bytes(8, "big"), _encoder.encode(batch)]


def decode(frames: list[bytes]) -> tuple[int, EventBatch]:
    """(sequence number, batch) of one ZMQ message."""
    if len(frames) != 3:
        raise BadMessage(f"expected 3 frames (topic, seq, payload), got {len(frames)}")
    _, seq, payload = frames
    if len(seq) != 8:
        raise BadMessage(f"sequence frame must be 8 bytes, got {len(seq)}")
    try:
        return int.from_bytes(seq, "big"), _decoder.decode(payload)
    except msgspec.DecodeError as e:
        raise BadMessage(f"undecodable payload: {e}") from None
