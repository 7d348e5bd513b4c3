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
# Engines count sequence numbers up from 0 in 8 unsigned bytes; one at 2**63 or above (negative to
# a signed reader) is corrupt.
MAX_SEQ = 2**63 - 1
# vLLM's bytes block hashes are 32 bytes (sha256); a longer one is corrupt.
MAX_HASH_BYTES = 64


class BadMessage(ValueError):
    """A message that is not a KV-event batch; dropped, never fatal. `reason` labels the drop in
    metrics: frames, seq_range, undecodable, oversize."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


_decoder = msgspec.msgpack.Decoder(EventBatch)
_encoder = msgspec.msgpack.Encoder()


def encode(topic: bytes, seq: int, batch: EventBatch) -> list[bytes]:
    return [topic, seq.to_bytes(8, "big"), _encoder.encode(batch)]


def sequence(frames: list[bytes]) -> int:
    """The sequence number of one ZMQ message, read before (and without) its payload."""
    if len(frames) != 3:
        raise BadMessage("frames", f"expected 3 frames (topic, seq, payload), got {len(frames)}")
    if len(frames[1]) != 8:
        raise BadMessage("frames", f"sequence frame must be 8 bytes, got {len(frames[1])}")
    seq = int.from_bytes(frames[1], "big")
    if seq > MAX_SEQ:
        raise BadMessage("seq_range", f"sequence number {seq} is above 2**63 - 1")
    return seq


def decode_batch(payload: bytes, max_blocks: int | None = None) -> EventBatch:
    """The batch of a message's payload; one naming more than `max_blocks` blocks is refused."""
    try:
        batch = _decoder.decode(payload)
    except msgspec.DecodeError as e:
        raise BadMessage("undecodable", f"undecodable payload: {e}") from None
    if max_blocks is not None:
        blocks = sum(len(e.block_hashes) for e in batch.events if not isinstance(e, AllBlocksCleared))
        if blocks > max_blocks:
            raise BadMessage("oversize", f"a batch of {blocks} blocks, at most {max_blocks}")
    return batch


def decode(frames: list[bytes]) -> tuple[int, EventBatch]:
    """(sequence number, batch) of one ZMQ message."""
    return sequence(frames), decode_batch(frames[2])
