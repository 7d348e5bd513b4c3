"""A decision's candidates against a real redis-server: every live worker with its shared load and
its KV overlap, the worker table rebuilt when the registry's view changes, and this router's own
load while Redis is away."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from kvmesh import block_index
from kvmesh.block_index import BlockIndex, BlockRun
from kvmesh.net import free_port
from kvmesh.redis_batch import Coalescer
from kvmesh.registry import LiveWorker
from kvmesh.routing.accounting import Accounting
from kvmesh.routing.candidates import CandidateSource
from kvmesh.routing.framework.types import Request
from kvmesh.routing.inflight import InFlight
from kvmesh.routing.redis_health import RedisHealth
from kvmesh.routing.shared_load import LIBRARY, LoadTable, SharedLoad, load_fields
from kvmesh.v1 import worker_pb2

BLOCK = 16
SEQS = (11, 12, 13, 14)


@dataclass
class FakeWatcher:
    workers: dict[str, LiveWorker]


def live(worker_id: str, block_size: int = BLOCK) -> LiveWorker:
    return LiveWorker(worker_pb2.WorkerRecord(id=worker_id, model="m", kv_block_size=block_size), 0)


def source(client: aioredis.Redis, watcher: FakeWatcher) -> CandidateSource:
    shared = SharedLoad(Coalescer(client, [LIBRARY]), 60)
    accounting = Accounting(InFlight(60), shared, RedisHealth())
    return CandidateSource(watcher, Coalescer(client, [block_index.LIBRARY]), accounting)


def request() -> Request:
    return Request(model="m", request_id="r", num_tokens=len(SEQS) * BLOCK, block_hashes=SEQS, block_size=BLOCK)


def figures(candidates) -> dict[str, tuple[int, int, int, int]]:
    return {c.id: (c.overlap_blocks, c.load.in_flight, c.load.prefill_blocks, c.load.decode_blocks) for c in candidates}


async def test_every_live_worker_with_its_overlap_and_shared_load(client):
    index = BlockIndex(client)
    await index.load_functions()
    await index.apply("a", [BlockRun(True, SEQS[0], list(SEQS[:3]))])
    await index.apply("other-size", [BlockRun(True, SEQS[0], list(SEQS))])
    watcher = FakeWatcher({"a": live("a"), "b": live("b"), "other-size": live("other-size", block_size=32)})
    candidates = source(client, watcher)
    await candidates.accounting.shared.add("r0", "b", prefill_blocks=3, total_blocks=4)
    assert figures(await candidates.gather(request())) == {
        "a": (3, 0, 0, 0), "b": (0, 1, 3, 0), "other-size": (0, 0, 0, 0)  # its blocks hash other tokens
    }  # fmt: skip
    # The registry read again: a new dict, and a worker that joined is a candidate at once.
    watcher.workers = {**watcher.workers, "c": live("c")}
    assert [c.id for c in await candidates.gather(request())] == ["a", "b", "other-size", "c"]


async def test_without_redis_this_routers_own_load():
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}", socket_connect_timeout=0.2)
    candidates = source(client, FakeWatcher({"a": live("a"), "b": live("b")}))
    candidates.accounting.local.add("r1", "a", 2, 5)
    assert figures(await candidates.gather(request())) == {"a": (0, 1, 2, 0), "b": (0, 0, 0, 0)}
    assert not candidates.accounting.health.reachable
    await client.aclose()


def test_load_table_reads_workers_in_order_absent_and_negative_as_zero():
    table = LoadTable.of_reply([b"a:n", b"2", b"a:p", b"7", b"a:d", b"-1", b"gone:n", b"9"])
    assert [(x.in_flight, x.prefill_blocks, x.decode_blocks) for x in table.loads(load_fields(["b", "a"]))] == [
        (0, 0, 0), (2, 7, 0)
    ]  # fmt: skip
    assert table["a"].in_flight == 2
