"""The router's shared in-flight load, against a real redis-server: the same phases as InFlight,
visible to every replica."""

from __future__ import annotations

import asyncio

from kvmesh.load_keys import routed_requests
from kvmesh.redis_batch import Coalescer
from kvmesh.routing.shared_load import LIBRARY, SharedLoad


def shared(client, lease_s: float = 60) -> SharedLoad:
    return SharedLoad(Coalescer(client, [LIBRARY]), lease_s)


def figures(load):
    return (load.in_flight, load.prefill_blocks, load.decode_blocks)


async def test_two_replicas_see_one_load(client):
    a, b = shared(client, 60), shared(client, 60)
    await a.add("r1", "w", prefill_blocks=3, total_blocks=4)
    await b.add("r2", "w", prefill_blocks=2, total_blocks=2)
    assert figures((await a.loads())["w"]) == (2, 5, 0)
    assert await b.mark_prefilled("r1")  # the other replica's request
    assert await a.mark_prefilled("r1")  # twice is harmless
    assert figures((await b.loads())["w"]) == (2, 2, 4)
    assert await a.release("r1") and await a.release("r2")
    assert not await a.release("r1")
    assert figures((await b.loads())["w"]) == (0, 0, 0)


async def test_a_worker_reads_how_many_routed_requests_it_still_has(client):
    load = shared(client, 60)
    assert await routed_requests(client, "w") == 0  # never routed to
    await load.add("r1", "w", 1, 1)
    await load.add("r2", "w", 1, 1)
    await load.add("r3", "other", 1, 1)
    await load.mark_prefilled("r1")  # counted until released, whatever its phase
    assert await routed_requests(client, "w") == 2
    await load.release("r1")
    await load.release("r2")
    assert await routed_requests(client, "w") == 0


async def test_retried_id_replaces_its_entry(client):
    load = shared(client, 60)
    await load.add("r", "a", 1, 1)
    await load.add("r", "b", 1, 1)
    loads = await load.loads()
    assert figures(loads["a"]) == (0, 0, 0) and figures(loads["b"]) == (1, 1, 0)


async def test_expired_leases_are_freed_by_the_next_write(client):
    short = shared(client, 0.01)
    await short.add("gone", "w", 2, 2)
    await asyncio.sleep(0.03)
    await shared(client, 60).add("new", "w", 1, 1)
    assert figures((await short.loads())["w"]) == (1, 1, 0)


async def test_survives_redis_forgetting_its_functions(client):
    load = shared(client, 60)
    await load.add("r", "w", 1, 1)
    await client.function_flush()
    assert await load.release("r")


async def test_fully_cached_requests_with_no_prefill_blocks(client):
    load = shared(client, 60)
    await load.add("cached", "w", prefill_blocks=0, total_blocks=0)
    assert await load.release("cached")
    await load.add("r", "w", prefill_blocks=0, total_blocks=3)
    assert await load.mark_prefilled("r") and await load.release("r")
    assert figures((await load.loads())["w"]) == (0, 0, 0)
