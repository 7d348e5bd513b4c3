"""The ingestor against a real registry and index: dead workers' entries go at start-up, an id
outside the rule is never subscribed, and Purge refuses one (real redis-server)."""

from __future__ import annotations

import pytest

from kvmesh import registry
from kvmesh.block_index import BlockIndex, BlockRun
from kvmesh.errors import InvalidArgument
from kvmesh.hashing import sequence_hashes
from kvmesh.v1 import kvindex_pb2, worker_pb2
from services.kvindex.ingest import Ingestor
from services.kvindex.servicer import KvIndexServicer
from tests.unit.services.kvindex.test_events import LIMITS

PROMPT = sequence_hashes(list(range(32)), block_size=8)


@pytest.fixture
async def client(redis_url):
    client = registry.connect(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def ingestor(client):
    workers = registry.Watcher(registry.Registry(client), min_interval_s=0.01)
    index = BlockIndex(client)
    await index.load_functions()
    ingestor = Ingestor(workers, index, retry_s=0.01, limits=LIMITS)
    yield ingestor
    await ingestor.stop()


async def test_start_purges_the_blocks_of_workers_not_in_the_registry(ingestor, client):
    await registry.Registry(client).register(worker_pb2.WorkerRecord(id="alive", model="m"), lease_ms=60_000)
    for worker_id in ("alive", "dead", "x}:w:alive"):
        await ingestor.index.apply(worker_id, [BlockRun(True, PROMPT[0], PROMPT)])
    await ingestor.workers.refresh()  # the registry read once: its background tasks are not the subject
    await ingestor.start()
    assert await ingestor.index.match(PROMPT) == {"alive": 4}


async def test_nothing_is_purged_on_an_unreachable_registry(ingestor):
    await ingestor.index.apply("maybe-alive", [BlockRun(True, PROMPT[0], PROMPT)])
    ingestor.workers.reachable = False
    await ingestor.start()
    assert await ingestor.index.match(PROMPT) == {"maybe-alive": 4}


async def test_a_record_with_a_bad_id_is_never_subscribed(ingestor, client):
    """Written by hand, past Registry.register's check."""
    record = worker_pb2.WorkerRecord(id="a}:w:b", model="m", kv_events_endpoint="ipc:///nonexistent")
    await client.set(registry.RECORD + record.id, record.SerializeToString(), px=60_000)
    await client.zadd(registry.INDEX, {record.id: registry.now_ms() + 60_000})
    await ingestor.workers.refresh()  # the registry read once: its background tasks are not the subject
    await ingestor.start()
    assert "a}:w:b" in ingestor.workers.workers and ingestor.subscriptions == {}


@pytest.mark.parametrize("worker_id", ["", "a}:w:b", "*"])
async def test_purge_refuses_an_id_outside_the_rule(ingestor, worker_id):
    await ingestor.index.apply("b", [BlockRun(True, PROMPT[0], PROMPT)])
    servicer = KvIndexServicer(ingestor.index, ingestor, max_match_blocks=16)
    with pytest.raises(InvalidArgument, match="not a worker id"):
        await servicer.Purge(kvindex_pb2.PurgeRequest(worker_id=worker_id), None)
    assert await ingestor.index.match(PROMPT) == {"b": 4}
