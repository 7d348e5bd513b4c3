"""Per-key quotas against a real redis-server, on a clock the test moves (Quotas reads it for every
call's now): limits trip at their exact counts, refill, free slots, and are one quota for every
gateway sharing the Redis."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from kvmesh.api_keys import ApiKey
from kvmesh.errors import InvalidArgument, Unavailable
from kvmesh.net import free_port
from kvmesh.quota import Quotas, RateLimited, UsageRow, duration

START = datetime(2026, 12, 7, 3, 59, 58, tzinfo=UTC).timestamp()  # 2 s before an hour ends


class Clock:
    def __init__(self):
        self.now = START

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def quotas(client, clock):
    return Quotas(client, clock=clock)


async def refused(quotas: Quotas, key: ApiKey, prompt_tokens: int = 0) -> RateLimited:
    with pytest.raises(RateLimited) as caught:
        await quotas.admit(key, "refused", prompt_tokens)
    assert caught.value.code == "rate_limit_exceeded" and caught.value.http_status == 429
    return caught.value


async def test_rpm_trips_at_one_over_with_retry_after(quotas):
    key = ApiKey(name="team-a", rpm=3)
    for i in range(3):
        await quotas.admit(key, f"r{i}", 10)
    error = await refused(quotas, key)
    assert error.message == "key 'team-a': 3 requests per minute used up; retry in 20 s"
    assert error.headers == {
        "Retry-After": "20",
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1m0s",
    }


async def test_tpm_trips_at_the_exact_token_count(quotas):
    key = ApiKey(name="k", tpm=100)
    for i in range(3):
        await quotas.admit(key, f"r{i}", 30)
    error = await refused(quotas, key, 30)  # 10 left; 20 more refill in 12 s
    assert error.message == "key 'k': 100 tokens per minute used up (this prompt needs 30); retry in 12 s"
    assert error.headers["Retry-After"] == "12" and error.headers["x-ratelimit-remaining-tokens"] == "10"
    await quotas.admit(key, "fits", 10)


async def test_completion_tokens_count_against_tpm(quotas):
    key = ApiKey(name="k", tpm=100)
    metered = await quotas.admit(key, "r", 30)
    await metered.finish("m", prompt_tokens=30, cached_tokens=0, completion_tokens=40)
    await quotas.admit(key, "r2", 30)  # 30 + 40 + 30: the whole minute's tokens
    await refused(quotas, key, 1)


async def test_streamed_tokens_are_charged_at_most_once_a_second(client, quotas, clock):
    key = ApiKey(name="k", tpm=60)  # a token a second
    metered = await quotas.admit(key, "r", 10)
    metered.completed(5)
    assert metered._flush is None  # not a second yet
    clock.now += 1  # refills 1
    metered.completed(5)
    metered.completed(3)  # one flush in flight at a time: this waits for the next
    await metered._flush
    other_gateway = Quotas(client, clock=clock)
    await refused(other_gateway, key, 42)  # 60 - 10 + 1 - 10
    last = await other_gateway.admit(key, "r2", 41)
    await metered.finish("m", 10, 0, 13)  # charges the 3 not flushed yet
    await last.finish("m", 41, 0, 0)
    await refused(quotas, key, 1)
    clock.now += 3
    await quotas.admit(key, "r3", 0)  # 3 refilled pay the 3 owed


async def test_a_prompt_larger_than_tpm_can_never_pass(quotas):
    error = await refused(quotas, ApiKey(name="k", tpm=100), 101)
    assert "can never fit its limit of 100 tokens per minute" in error.message
    assert "Retry-After" not in error.headers
    await quotas.admit(ApiKey(name="k", tpm=100), "r", 100)  # nothing was taken


async def test_concurrency_trips_at_one_over_and_frees_on_finish(quotas):
    key = ApiKey(name="k", max_concurrency=2)
    first = await quotas.admit(key, "r1", 0)
    await quotas.admit(key, "r2", 0)
    error = await refused(quotas, key)
    assert error.message == "key 'k': 2 requests in flight, its most at once; retry in 1 s"
    assert error.headers == {"Retry-After": "1"}
    await first.finish("m", 0, 0, 0)
    await first.finish("m", 0, 0, 0)  # twice frees one slot, counts one request
    await quotas.admit(key, "r3", 0)
    await refused(quotas, key)


async def test_an_expired_lease_frees_its_slot(client, clock):
    quotas = Quotas(client, lease_s=10, clock=clock)
    key = ApiKey(name="k", max_concurrency=1)
    await quotas.admit(key, "gateway-died", 0)
    clock.now += 9
    await refused(quotas, key)
    clock.now += 1.001
    await quotas.admit(key, "r", 0)


async def test_a_refused_request_takes_nothing(quotas):
    key = ApiKey(name="k", rpm=2, tpm=100, max_concurrency=1)
    await quotas.admit(key, "r1", 50)
    for _ in range(5):
        await refused(quotas, key, 10)  # concurrency: neither a request nor tokens go
    error = await refused(quotas, ApiKey(name="k", rpm=2, tpm=100, max_concurrency=2), 60)
    assert error.headers["x-ratelimit-remaining-requests"] == "1"
    assert error.headers["x-ratelimit-remaining-tokens"] == "50"


async def test_buckets_refill_over_time(quotas, clock):
    key = ApiKey(name="k", rpm=60)  # a request a second
    for i in range(60):
        await quotas.admit(key, f"a{i}", 0)
    assert (await refused(quotas, key)).headers["Retry-After"] == "1"
    clock.now += 0.5
    assert (await refused(quotas, key)).headers["Retry-After"] == "1"  # 0.5 s, rounded up
    clock.now += 0.5
    await quotas.admit(key, "b", 0)
    await refused(quotas, key)
    clock.now += 120  # full again, and no fuller
    for i in range(60):
        await quotas.admit(key, f"c{i}", 0)
    await refused(quotas, key)


async def test_two_gateways_share_one_quota(client, clock):
    a, b = Quotas(client, clock=clock), Quotas(client, clock=clock)
    key = ApiKey(name="k", rpm=2)
    await a.admit(key, "r1", 0)
    await b.admit(key, "r2", 0)
    await refused(a, key)
    await refused(b, key)
    await a.admit(ApiKey(name="other", rpm=2), "r3", 0)  # another key's quota is its own


async def test_usage_per_key_model_and_hour(quotas, clock):
    a, b = ApiKey(name="team-a"), ApiKey(name="team-b", rpm=10)
    await (await quotas.admit(a, "1", 10)).finish("m1", 10, 4, 5)
    await (await quotas.admit(a, "2", 20)).finish("m1", 20, 0, 7)
    await (await quotas.admit(a, "3", 1)).finish("m2", 1, 0, 2)
    clock.now += 2  # the next hour
    await (await quotas.admit(a, "4", 3)).finish("m1", 3, 0, 1)
    await (await quotas.admit(b, "5", 8)).finish("m1", 8, 8, 0)
    three, four = (datetime(2026, 12, 7, h, tzinfo=UTC) for h in (3, 4))
    assert await quotas.usage(None, hours=2) == [
        UsageRow("team-a", three, "m1", 2, 30, 4, 12),
        UsageRow("team-a", three, "m2", 1, 1, 0, 2),
        UsageRow("team-a", four, "m1", 1, 3, 0, 1),
        UsageRow("team-b", four, "m1", 1, 8, 8, 0),
    ]
    assert await quotas.usage(["team-a"], hours=1) == [UsageRow("team-a", four, "m1", 1, 3, 0, 1)]
    assert await quotas.usage(["nobody"], hours=24) == []
    for hours in (0, 35 * 24 + 1, 2**32 - 1):  # a client's uint32: never a loop over billions of hours
        with pytest.raises(InvalidArgument, match="hours"):
            await quotas.usage(None, hours=hours)
    with pytest.raises(InvalidArgument, match="names"):
        await quotas.usage([f"k{i}" for i in range(1001)], hours=1)


async def test_usage_records_expire_after_35_days(client, quotas):
    await (await quotas.admit(ApiKey(name="k"), "r", 1)).finish("m", 1, 0, 1)
    [record] = [k async for k in client.scan_iter(match="kvq:*:usage:*")]
    assert 34 * 86400 < await client.ttl(record) <= 35 * 86400


async def test_functions_lost_by_redis_are_loaded_again(client, quotas):
    key = ApiKey(name="k", rpm=2, max_concurrency=1)
    metered = await quotas.admit(key, "r1", 0)
    await client.function_flush()
    await metered.finish("m", 0, 0, 0)
    await client.function_flush()
    await quotas.admit(key, "r2", 0)
    await refused(quotas, key)


async def test_finish_survives_its_callers_cancellation(quotas):
    key = ApiKey(name="k", max_concurrency=1)
    metered = await quotas.admit(key, "r", 0)
    caller = asyncio.create_task(metered.finish("m", 5, 0, 6))
    await asyncio.sleep(0)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.gather(*quotas._background)
    await quotas.admit(key, "r2", 0)  # the slot was freed all the same
    assert [(r.requests, r.prompt_tokens, r.completion_tokens) for r in await quotas.usage(["k"], 1)] == [(1, 5, 6)]


async def test_headers_for_an_admitted_request(quotas):
    metered = await quotas.admit(ApiKey(name="k", rpm=600, tpm=1000), "r", 100)
    assert metered.headers == {
        "x-ratelimit-limit-requests": "600",
        "x-ratelimit-remaining-requests": "599",
        "x-ratelimit-reset-requests": "100ms",  # one request of 600 a minute
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "900",
        "x-ratelimit-reset-tokens": "6s",
    }
    assert (await quotas.admit(ApiKey(name="k2", max_concurrency=5), "r", 1)).headers == {}
    assert (await quotas.admit(ApiKey(name="k3"), "r", 1)).headers == {}


@pytest.mark.parametrize(
    ("ms", "text"),
    [(0, "0s"), (17, "17ms"), (1000, "1s"), (8640, "8.64s"), (60_000, "1m0s"), (360_000, "6m0s"),
     (179_560, "2m59.56s"), (3_723_500, "1h2m3.5s")],
)  # fmt: skip
def test_durations_as_openai_writes_them(ms, text):
    assert duration(ms) == text


async def test_an_unreachable_redis_is_unavailable():
    client = aioredis.Redis(port=free_port(), retry=Retry(NoBackoff(), 0))
    with pytest.raises(Unavailable, match="quota store"):
        await Quotas(client).admit(ApiKey(name="k", rpm=1), "r", 1)
    await client.aclose()


async def test_closing_sends_the_releases_still_lingering(client, clock):
    quotas = Quotas(client, clock=clock)
    key = ApiKey(name="k", max_concurrency=2)
    for rid in ("r1", "r2"):
        (await quotas.admit(key, rid, 3)).end("m", 3, 0, 4)  # as the gateway does: not waited for
    await quotas.aclose()  # a stopping gateway
    after = Quotas(client, clock=clock)
    await after.admit(key, "r3", 0)
    await after.admit(key, "r4", 0)  # both slots were freed
    assert [(r.requests, r.prompt_tokens, r.completion_tokens) for r in await after.usage(["k"], 1)] == [(2, 6, 8)]
