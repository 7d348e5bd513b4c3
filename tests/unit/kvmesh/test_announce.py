import asyncio

import pytest

from kvmesh import announce, registry


@pytest.fixture
async def client(redis_url):
    client = registry.connect(redis_url)
    yield client
    await client.aclose()


async def test_an_announcement_lives_while_renewed_and_goes_with_its_lease(client):
    kept = announce.endpoint("router", "127.0.0.1", 9101)
    lapsed = announce.endpoint("kvindex", "127.0.0.1", 9102)
    await announce.announce(client, kept, lease_ms=300)
    await announce.announce(client, lapsed, lease_ms=300)
    for _ in range(4):
        await asyncio.sleep(0.15)
        await announce.announce(client, kept, lease_ms=300)  # the renewal
    assert await announce.read(client) == [kept]


async def test_the_same_endpoint_announced_twice_is_one_target(client):
    """A gateway's --procs N processes share their port and announce the same endpoint."""
    gateway = announce.endpoint("gateway", "10.0.0.7", 8080, scheme="https")
    for _ in range(3):
        await announce.announce(client, gateway)
    assert await announce.read(client) == [gateway]
    assert gateway.id == "gateway@10.0.0.7:8080"
    assert announce.endpoint("planner", "::1", 9) == announce.Endpoint("planner", "planner@[::1]:9", "[::1]:9")


async def test_an_announcement_is_renewed_until_stopped_then_withdrawn(redis_url, client):
    own = registry.connect(redis_url)
    announcement = announce.Announcement(own, announce.endpoint("planner", "127.0.0.1", 9103), lease_ms=300).start()
    await asyncio.sleep(0.5)  # past the first lease: renewed
    assert [e.kind for e in await announce.read(client)] == ["planner"]
    await announcement.stop()
    assert await announce.read(client) == []


async def test_an_unknown_kind_or_an_unreadable_member_is_refused(client):
    with pytest.raises(ValueError, match="worker"):
        announce.endpoint("worker", "127.0.0.1", 1)  # workers are in the worker registry
    await client.zadd(announce.SERVICES, {b"not an endpoint": registry.now_ms() + 5000})
    assert await announce.read(client) == []


async def test_a_stopped_announcement_survives_redis_being_away(client):
    """Renewal failures are logged and retried; stop() does not raise without Redis."""
    unreachable = registry.connect("redis://127.0.0.1:1/0", timeout_s=0.1)
    announcement = announce.Announcement(unreachable, announce.endpoint("router", "127.0.0.1", 9), lease_ms=300)
    announcement.start()
    await asyncio.sleep(0.25)
    await announcement.stop()
