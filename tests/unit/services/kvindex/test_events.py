"""kvindex's view of vLLM's KV events: decoding (bad messages dropped), engine → canonical hashes,
and a subscription's gap handling against real ZMQ sockets."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest
import redis.asyncio as aioredis
import zmq
import zmq.asyncio
from prometheus_client import REGISTRY

from kvmesh import hashing, kv_events
from kvmesh.block_index import BlockIndex, BlockRun
from kvmesh.kv_events import AllBlocksCleared, BadMessage, BlockRemoved, BlockStored, EventBatch, decode, encode
from kvmesh.v1 import worker_pb2
from services.kvindex import metrics
from services.kvindex.subscription import LAG_WINDOW_S, Limits, Subscription, WorkerStats
from services.kvindex.translate import WorkerBlocks

MODEL = "m"
TOKENS = list(range(100, 132))  # 4 blocks of 8
SEQ = hashing.sequence_hashes(TOKENS, 8, MODEL)
LIMITS = Limits(
    max_block_size=64, max_batch_blocks=16, max_message_bytes=1 << 20, max_seq_gap=100, max_worker_blocks=1000
)


def stored(engine_hashes, tokens, parent=None):
    return BlockStored(engine_hashes, parent, tokens, 8, lora_id=None, medium="GPU", lora_name=None)


def message(seq: int, *events, ts: float = 0.0) -> list[bytes]:
    """A message exactly as vLLM's ZmqEventPublisher sends it."""
    return encode(b"kv", seq, EventBatch(ts, list(events)))


def test_encodes_byte_for_byte_as_vllm():
    vllm_events = pytest.importorskip("vllm.distributed.kv_events")
    theirs = vllm_events.KVEventBatch(
        ts=1.5,
        events=[
            vllm_events.BlockStored(
                block_hashes=[1, 2],
                parent_block_hash=7,
                token_ids=list(range(8)),
                block_size=4,
                lora_id=None,
                medium="GPU",
                lora_name=None,
            ),
            vllm_events.BlockRemoved(block_hashes=[3], medium="GPU"),
            vllm_events.AllBlocksCleared(),
        ],
    )
    ours = EventBatch(
        1.5,
        [
            BlockStored([1, 2], 7, list(range(8)), 4, lora_id=None, medium="GPU", lora_name=None),
            BlockRemoved([3], medium="GPU"),
            AllBlocksCleared(),
        ],
    )
    assert encode(b"t", 5, ours)[2] == msgspec.msgpack.Encoder().encode(theirs)


def test_decodes_vllms_wire_format():
    frames = [b"", (7).to_bytes(8, "big"), msgspec.msgpack.encode([1.5, [{"type": "AllBlocksCleared"}], None])]
    seq, batch = decode(frames)
    assert seq == 7 and batch.ts == 1.5 and batch.events == [AllBlocksCleared()]


@pytest.mark.parametrize(
    "frames",
    [
        [b"only one frame"],
        [b"", b"short", b""],
        [b"", bytes(8), b"\xc1 not msgpack"],
        [b"", bytes(8), msgspec.msgpack.encode([1.0, [{"type": "NoSuchEvent"}]])],
        [b"", bytes(8), msgspec.msgpack.encode({"ts": 1.0})],
    ],
)
def test_bad_messages_are_rejected_cleanly(frames):
    with pytest.raises(BadMessage):
        decode(frames)


def test_stored_blocks_chain_from_their_parent_and_removals_map_back():
    blocks = WorkerBlocks(MODEL, LIMITS.max_block_size, LIMITS.max_worker_blocks)
    first = blocks.translate(EventBatch(0, [stored([11, 12], TOKENS[:16])]))
    assert first.runs == [BlockRun(True, SEQ[0], SEQ[:2])]
    # bytes hashes (sha256 mode) work the same; the chain continues from the parent's canonical hash
    rest = blocks.translate(EventBatch(0, [stored([b"c", b"d"], TOKENS[16:], parent=12)]))
    assert rest.runs == [BlockRun(True, SEQ[0], SEQ[2:])]
    removed = blocks.translate(EventBatch(0, [BlockRemoved([b"d", 99, b"c"], medium="GPU")]))
    assert removed.runs == [BlockRun(False, SEQ[0], [SEQ[3], SEQ[2]])] and removed.dropped == 1
    assert len(blocks) == 2


def test_unknown_parent_or_odd_sizes_are_dropped_not_guessed():
    blocks = WorkerBlocks(MODEL, LIMITS.max_block_size, LIMITS.max_worker_blocks)
    orphan = blocks.translate(EventBatch(0, [stored([5], TOKENS[8:16], parent=4)]))
    short = blocks.translate(EventBatch(0, [stored([6, 7], TOKENS[:12])]))
    assert orphan.runs == [] and orphan.dropped == 1
    assert short.runs == [] and short.dropped == 2


@pytest.mark.parametrize("bad_token", [-1, 2**32])
def test_token_ids_outside_u32_drop_their_blocks(bad_token):
    blocks = WorkerBlocks(MODEL, LIMITS.max_block_size, LIMITS.max_worker_blocks)
    out = blocks.translate(EventBatch(0, [stored([1], [bad_token] + TOKENS[1:8]), stored([2], TOKENS[:8])]))
    assert out.dropped == 1 and out.runs == [BlockRun(True, SEQ[0], SEQ[:1])]


def test_all_blocks_cleared_forgets_what_came_before():
    blocks = WorkerBlocks(MODEL, LIMITS.max_block_size, LIMITS.max_worker_blocks)
    out = blocks.translate(EventBatch(0, [stored([1], TOKENS[:8]), AllBlocksCleared(), stored([2], TOKENS[8:16])]))
    assert out.cleared and out.runs[0].seqs == hashing.sequence_hashes(TOKENS[8:16], 8, MODEL)
    assert len(blocks) == 1


class FakeVllmPublisher:
    """vLLM's publisher protocol on real sockets: PUB for batches, ROUTER replaying from a buffer."""

    def __init__(self, ctx: zmq.asyncio.Context, tmp_path, keep: int):
        self.pub = ctx.socket(zmq.PUB)
        self.pub.bind(f"ipc://{tmp_path}/pub.sock")
        self.router = ctx.socket(zmq.ROUTER)
        self.router.bind(f"ipc://{tmp_path}/replay.sock")
        self.buffer: list[list[bytes]] = []
        self.keep = keep
        self.requests: list[int] = []  # the start of each replay asked for
        self.task = asyncio.ensure_future(self._replay())

    async def _replay(self):
        while True:
            client, _, start = await self.router.recv_multipart()
            self.requests.append(int.from_bytes(start, "big"))
            for frames in self.buffer[-self.keep :]:
                if int.from_bytes(frames[1], "big") >= int.from_bytes(start, "big"):
                    await self.router.send_multipart([client, b"", *frames])
            await self.router.send_multipart([client, b"", b"", kv_events.END_SEQ, b""])

    def record(self, frames):
        self.buffer.append(frames)
        return frames


@pytest.fixture
async def index(redis_url):
    client = aioredis.Redis.from_url(redis_url)
    index = BlockIndex(client)
    yield index
    await client.aclose()


async def subscription_for(tmp_path, index, keep, limits=LIMITS):
    ctx = zmq.asyncio.Context()
    publisher = FakeVllmPublisher(ctx, tmp_path, keep)
    record = worker_pb2.WorkerRecord(
        id="w",
        model=MODEL,
        kv_events_endpoint=f"ipc://{tmp_path}/pub.sock",
        kv_events_replay_endpoint=f"ipc://{tmp_path}/replay.sock",
    )
    return ctx, publisher, Subscription(ctx, record, index, limits)


async def test_a_gap_is_filled_from_the_replay_buffer(tmp_path, index):
    ctx, publisher, sub = await subscription_for(tmp_path, index, keep=10)
    batches = [
        publisher.record(message(0, stored([1], TOKENS[:8]))),
        publisher.record(message(1, stored([2], TOKENS[8:16], parent=1))),  # lost on the way
        publisher.record(message(2, stored([3], TOKENS[16:24], parent=2))),
    ]
    await sub.handle(batches[0])
    await sub.handle(batches[2])
    assert await index.match(SEQ) == {"w": 3}
    assert (sub.stats.resyncs, sub.stats.last_seq) == (1, 2)
    await sub.handle(batches[1])  # a late duplicate changes nothing
    assert sub.stats.events == 3
    assert len(sub.stats.lags_ms) == 2  # the two live batches; the replayed one is no lag
    publisher.task.cancel()
    ctx.destroy(linger=0)


async def test_events_lag_and_index_blocks_are_exported(tmp_path, index):
    ctx, publisher, sub = await subscription_for(tmp_path, index, keep=10)
    events_before = REGISTRY.get_sample_value("kvmesh_kvindex_events_total", {"worker": "w"}) or 0
    lags_before = REGISTRY.get_sample_value("kvmesh_kvindex_ingestion_lag_seconds_count") or 0
    await sub.handle(message(0, stored([1, 2], TOKENS[:16]), ts=time.time() - 0.2))
    await sub.handle(message(1, BlockRemoved([2], medium="GPU"), ts=time.time()))
    assert REGISTRY.get_sample_value("kvmesh_kvindex_events_total", {"worker": "w"}) == events_before + 3
    assert REGISTRY.get_sample_value("kvmesh_kvindex_ingestion_lag_seconds_count") == lags_before + 2
    assert REGISTRY.get_sample_value("kvmesh_kvindex_ingestion_lag_seconds_bucket", {"le": "0.1"}) < lags_before + 2
    assert REGISTRY.get_sample_value("kvmesh_kvindex_index_blocks", {"worker": "w"}) == 1
    metrics.forget_worker("w")
    assert REGISTRY.get_sample_value("kvmesh_kvindex_index_blocks", {"worker": "w"}) is None
    publisher.task.cancel()
    ctx.destroy(linger=0)


async def test_an_unfillable_gap_clears_the_worker_rather_than_lie(tmp_path, index):
    ctx, publisher, sub = await subscription_for(tmp_path, index, keep=1)
    batches = [
        publisher.record(message(0, stored([1], TOKENS[:8]))),
        publisher.record(message(1, BlockRemoved([1], medium="GPU"))),  # lost, and gone from the buffer
        publisher.record(message(2, stored([9], TOKENS[24:32], parent=8))),
    ]
    await sub.handle(batches[0])
    await sub.handle(batches[2])
    assert await index.match(SEQ) == {}  # block 0 was removed on the worker: not claimed
    assert sub.stats.resyncs == 1 and len(sub.blocks) == 0
    publisher.task.cancel()
    ctx.destroy(linger=0)


async def test_bad_message_is_counted_and_the_stream_goes_on(tmp_path, index):
    ctx, publisher, sub = await subscription_for(tmp_path, index, keep=10)
    await sub.handle([b"garbage"])
    await sub.handle(message(0, stored([1], TOKENS[:8])))
    assert sub.stats.bad_messages == 1 and await index.match(SEQ) == {"w": 1}
    publisher.task.cancel()
    ctx.destroy(linger=0)


async def test_a_late_subscriber_catches_up_from_the_replay_buffer(tmp_path, index):
    ctx, publisher, sub = await subscription_for(tmp_path, index, keep=10)
    publisher.record(message(0, stored([1], TOKENS[:8])))
    publisher.record(message(1, stored([2], TOKENS[8:16], parent=1)))
    await sub.catch_up()
    assert await index.match(SEQ) == {"w": 2} and sub.stats.last_seq == 1 and sub.stats.resyncs == 0
    assert not sub.stats.lags_ms  # caught up, not late
    await sub.handle(message(1, stored([2], TOKENS[8:16], parent=1)))  # the live copy: skipped
    assert sub.stats.events == 2
    publisher.task.cancel()
    ctx.destroy(linger=0)


async def test_catching_up_from_a_buffer_that_lost_its_start(tmp_path, index):
    ctx, publisher, sub = await subscription_for(tmp_path, index, keep=1)
    publisher.record(message(0, stored([1], TOKENS[:8])))
    publisher.record(message(1, stored([2], TOKENS[8:16], parent=1)))  # its parent is gone
    await sub.catch_up()
    assert await index.match(SEQ) == {} and sub.stats.resyncs == 1 and sub.stats.last_seq == 1
    publisher.task.cancel()
    ctx.destroy(linger=0)


def test_lags_older_than_the_window_go_as_new_ones_come():
    """Not only when Stats is called: with no one asking, a busy kvindex would keep 100,000."""
    stats = WorkerStats()
    stats.add_lags(1000.0, [999.9, 999.8])
    stats.add_lags(1000.0 + LAG_WINDOW_S + 1, [1000.0 + LAG_WINDOW_S + 0.5])
    assert [round(lag) for _, lag in stats.lags_ms] == [500]
