"""A gateway's leased slices of busy keys' quotas, against a real redis-server on a clock the test
moves: requests admitted from a slice make no Redis call, gateways between them never admit more
than a limit, what a slice did not use goes back, and near a limit every request asks Redis again."""

from __future__ import annotations

import pytest

from kvmesh.api_keys import ApiKey
from kvmesh.quota import Quotas, RateLimited, keys
from kvmesh.quota_lease import BLOCK_S, leasable
from tests.unit.kvmesh.test_quota import Clock

UNIT = 60000  # quota.lua's: a bucket's level in 1/60000 of a request or token


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
async def gateways(client, clock):
    """Quotas as gateways hold them, closed at the end (their renewals would run on)."""
    made = []

    def gateway() -> Quotas:
        made.append(Quotas(client, clock=clock))
        return made[-1]

    await Quotas(client, clock=clock).admit(ApiKey(name="warm-up", rpm=1), "r", 0)  # loads the functions
    yield gateway
    for quotas in made:
        await quotas.aclose()


async def fcalls(client) -> int:
    return (await client.info("commandstats")).get("cmdstat_fcall", {}).get("calls", 0)


async def level(client, name: str, bucket: str) -> float:
    stored = await client.hget(keys(name)[0], bucket)
    return int(stored) / UNIT


async def admitted_until_refused(quotas: Quotas, key: ApiKey, prompt_tokens: int = 0) -> int:
    n = 0
    while True:
        try:
            await quotas.admit(key, f"r{n}", prompt_tokens)
        except RateLimited:
            return n
        n += 1


def test_only_keys_whose_every_limit_is_64_or_more_lease():
    assert leasable(ApiKey(name="k", rpm=64, tpm=10**6, max_concurrency=64))
    assert not leasable(ApiKey(name="k", rpm=600, max_concurrency=16))
    assert not leasable(ApiKey(name="k"))


async def test_a_busy_keys_requests_are_admitted_from_slices_without_a_call_each(client, gateways):
    quotas = gateways()
    key = ApiKey(name="busy", rpm=6400, tpm=6400 * 100, max_concurrency=640)
    before = await fcalls(client)
    for i in range(12):
        metered = await quotas.admit(key, f"r{i}", 100)
        metered.end("m", 100, 0, 0)
    # A slice of 4 requests, then one of 8 (twice what the period used) with the first 4's usage:
    # three calls for 12 requests.
    assert await fcalls(client) - before == 3
    assert await level(client, "busy", "r") == 6400 - 12
    assert metered.headers["x-ratelimit-remaining-requests"] == str(6400 - 12)


async def test_a_renewal_gives_back_the_unused_part_and_records_the_usage(client, clock, gateways):
    quotas = gateways()
    key = ApiKey(name="k", rpm=6400, tpm=640_000, max_concurrency=640)
    running = await quotas.admit(key, "a", 10)
    (await quotas.admit(key, "b", 20)).end("m", 20, 5, 7)
    running.completed(3)
    await quotas._renew_all()  # what the gateway does every LEASE_S
    assert await level(client, "k", "r") == 6400 - 2 - 4  # both admitted, and a new slice of 4 taken
    await quotas.aclose()  # a gateway that stops gives everything back
    assert await level(client, "k", "r") == 6400 - 2
    assert await level(client, "k", "t") == 640_000 - 10 - 20 - 7 - 3
    assert await client.hget(keys("k")[2], quotas.holder) is not None  # "a" still holds its slot
    [row] = await Quotas(client, clock=clock).usage(["k"], hours=1)
    assert (row.requests, row.prompt_tokens, row.cached_tokens, row.completion_tokens) == (1, 20, 5, 7)


async def test_two_gateways_never_admit_more_than_the_limit(gateways):
    a, b = gateways(), gateways()
    key = ApiKey(name="shared", rpm=128)  # slices of at most 2 requests
    admitted = [0, 0]
    refused = [False, False]
    while not all(refused):
        for i, quotas in enumerate((a, b)):
            try:
                await quotas.admit(key, f"{i}-{admitted[i]}", 0)
                admitted[i] += 1
            except RateLimited:
                refused[i] = True
    assert sum(admitted) == 128 and min(admitted) > 40


async def test_near_a_limit_each_request_asks_redis(client, gateways):
    quotas = gateways()
    key = ApiKey(name="k", rpm=128)
    for i in range(100):  # under a quarter left: no more slices
        await quotas.admit(key, f"a{i}", 0)
    for i in range(10):
        before = await fcalls(client)
        await quotas.admit(key, f"b{i}", 0)
        assert await fcalls(client) - before == 1
    assert await admitted_until_refused(quotas, key) == 128 - 110


async def test_a_slices_slots_count_against_every_gateway(gateways):
    a, b = gateways(), gateways()
    key = ApiKey(name="k", max_concurrency=128)
    held = [await a.admit(key, f"a{i}", 0) for i in range(10)]
    assert await admitted_until_refused(b, key) == 118
    for metered in held:
        metered.end("m", 0, 0, 0)
    await a._renew_all()  # the ended requests' slots go back with the renewal
    assert await admitted_until_refused(b, key) == 10


async def test_a_dead_gateways_slots_are_freed_when_its_block_runs_out(client, clock, gateways):
    dead, alive = Quotas(client, clock=clock), gateways()  # `dead` is never closed
    key = ApiKey(name="k", max_concurrency=64)
    await dead.admit(key, "held", 0)  # its block: one slot in use
    dead._renewer.cancel()
    assert await admitted_until_refused(alive, key) == 63
    clock.now += BLOCK_S + 0.001
    await alive.admit(key, "freed", 0)
    dead._calls.wire.close()
