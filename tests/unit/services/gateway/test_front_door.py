"""The front door with real quotas in a real Redis and a fake generator: admission as the first
chunk is asked for, a refusal that starts nothing, and a quota slot given back however the
request ends (whole, abandoned by its client, or failed)."""

import asyncio
from types import SimpleNamespace

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from kvmesh.api_keys import ApiKey
from kvmesh.errors import Unavailable
from kvmesh.quota import Quotas, RateLimited
from services.gateway.front_door import QUEUE_HEADER, FrontDoor
from services.gateway.generation import Chunk, Usage
from services.gateway.key_metrics import KeyMetrics

MODEL = SimpleNamespace(name="m")
SAMPLING = SimpleNamespace(max_tokens=3)
ONE_AT_A_TIME = ApiKey(name="solo", rpm=100, max_concurrency=1)


class FakeGenerator:
    def __init__(self, fail: bool = False):
        self.fail = fail
        self.started = self.closed = 0

    async def generate(self, model, prompt_ids, sampling, request_id, parent, whole, ticket, timeout_s=None):
        self.started += 1
        try:
            for i in range(2):
                yield Chunk("x", [i])
            if self.fail:
                raise Unavailable("worker gone")
            yield Chunk("y", [2], "length", Usage(len(prompt_ids), 3, 1))
        finally:
            self.closed += 1


@pytest.fixture
async def quotas(redis_url):
    client = aioredis.Redis.from_url(redis_url)
    yield Quotas(client)
    await client.aclose()


async def _settled(quotas: Quotas) -> None:
    await asyncio.gather(*quotas._background)  # the releases the front door does not wait for


async def test_an_admitted_request_streams_with_its_headers_and_frees_its_slot(quotas):
    front, generator = FrontDoor(FakeGenerator(), quotas, KeyMetrics()), None
    admitted = front.enter(ONE_AT_A_TIME, MODEL, [1, 2, 3, 4], SAMPLING, "r1")
    chunks = [c async for c in admitted.chunks]
    assert [c.token_ids for c in chunks] == [[0], [1], [2]]
    headers = admitted.headers()
    assert headers["x-ratelimit-limit-requests"] == "100" and float(headers[QUEUE_HEADER]) == 0.0
    await _settled(quotas)
    again = front.enter(ONE_AT_A_TIME, MODEL, [1], SAMPLING, "r2")
    assert len([c async for c in again.chunks]) == 3  # the one slot is free again
    assert generator is None


async def test_a_refused_request_starts_nothing_and_is_counted(quotas):
    generator = FakeGenerator()
    front = FrontDoor(generator, quotas, KeyMetrics())
    held = front.enter(ONE_AT_A_TIME, MODEL, [1], SAMPLING, "holder")
    await anext(held.chunks)  # admitted: holds the key's one slot
    before = REGISTRY.get_sample_value("kvmesh_gateway_key_requests_total", {"key": "solo", "status": "429"}) or 0
    refused = front.enter(ONE_AT_A_TIME, MODEL, [1], SAMPLING, "second")
    with pytest.raises(RateLimited, match="requests in flight"):
        await anext(refused.chunks)
    assert generator.started == 1
    assert (
        REGISTRY.get_sample_value("kvmesh_gateway_key_requests_total", {"key": "solo", "status": "429"}) == before + 1
    )
    await held.chunks.aclose()
    await _settled(quotas)


@pytest.mark.parametrize("ending", ["abandoned", "failed"])
async def test_the_slot_comes_back_however_the_request_ends(quotas, ending):
    generator = FakeGenerator(fail=ending == "failed")
    front = FrontDoor(generator, quotas, KeyMetrics())
    admitted = front.enter(ONE_AT_A_TIME, MODEL, [1], SAMPLING, "r1")
    if ending == "abandoned":
        await anext(admitted.chunks)
        await admitted.chunks.aclose()  # the client went away
    else:
        with pytest.raises(Unavailable):
            async for _ in admitted.chunks:
                pass
    assert generator.closed == 1
    await _settled(quotas)
    after = front.enter(ONE_AT_A_TIME, MODEL, [1], SAMPLING, "r2")
    await anext(after.chunks)  # admitted: the one slot is free again
    await after.chunks.aclose()
    await _settled(quotas)


async def test_without_quotas_a_request_passes_untouched():
    front = FrontDoor(FakeGenerator(), None, KeyMetrics())
    admitted = front.enter(None, MODEL, [1], SAMPLING, "r1")
    assert len([c async for c in admitted.chunks]) == 3
    assert set(admitted.headers()) == {QUEUE_HEADER}
