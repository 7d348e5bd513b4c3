import asyncio

import pytest
import redis.asyncio

from kvmesh import registry
from kvmesh.v1 import worker_pb2


def record(worker_id: str, model: str = "m") -> worker_pb2.WorkerRecord:
    return worker_pb2.WorkerRecord(id=worker_id, model=model, triton_grpc_address="127.0.0.1:1", capacity=4)


@pytest.fixture
async def reg(redis_url):
    client = registry.connect(redis_url)
    yield registry.Registry(client)
    await client.aclose()


async def test_register_list_deregister(reg):
    await reg.register(record("a"), lease_ms=5000)
    await reg.register(record("b", model="other"), lease_ms=5000)
    live = {w.record.id: w for w in (await reg.read()).workers}
    assert set(live) == {"a", "b"}
    assert live["b"].record.model == "other"
    assert live["a"].lease_expires_ms > registry.now_ms()
    await reg.deregister("a")
    assert await ids(reg) == ["b"]


async def ids(reg) -> list[str]:
    return [w.record.id for w in (await reg.read()).workers]


async def test_a_read_given_the_last_one_sees_joins_changes_and_leaves(reg):
    await reg.register(record("a"), lease_ms=5000)
    await reg.register(record("b"), lease_ms=5000)
    first = {w.record.id: w for w in (await reg.read()).workers}
    await reg.register(record("b", model="other"), lease_ms=5000)  # a changed record (a role flip)
    await reg.register(record("c"), lease_ms=5000)  # joined
    await reg.deregister("a")
    second = {w.record.id: w for w in (await reg.read(first)).workers}
    assert {i: w.record.model for i, w in second.items()} == {"b": "other", "c": "m"}
    third = {w.record.id: w for w in (await reg.read(second)).workers}
    assert third["c"].record is second["c"].record  # unchanged: not parsed again
    assert (await reg.read(second)).epoch == (await reg.read()).epoch


async def test_expired_lease_disappears_and_heartbeat_keeps_alive(reg):
    await reg.register(record("short"), lease_ms=300)
    await reg.register(record("kept"), lease_ms=300)
    for _ in range(4):
        await asyncio.sleep(0.15)
        await reg.register(record("kept"), lease_ms=300)  # the heartbeat
    assert await ids(reg) == ["kept"]


async def test_watcher_sees_joins_and_leaves_and_survives_redis_loss(reg, redis_server):
    watcher = registry.Watcher(reg, min_interval_s=0.05)
    await watcher.start()
    try:
        await reg.register(record("a"), lease_ms=5000)
        await _until(lambda: "a" in watcher.workers)
        await reg.deregister("a")
        await _until(lambda: "a" not in watcher.workers)
        await reg.register(record("b"), lease_ms=5000)
        await _until(lambda: "b" in watcher.workers)
        # Redis unreachable: the last known set is kept.
        watcher.registry = registry.Registry(registry.connect("redis://127.0.0.1:1/0"))
        await _until(lambda: not watcher.reachable)
        assert set(watcher.workers) == {"b"}
    finally:
        await watcher.stop()


async def test_watcher_keeps_workers_through_a_registry_reset_until_their_leases_end(reg):
    watcher = registry.Watcher(reg, min_interval_s=0.05)
    watcher.RESYNC_S = 1.0  # the grace after a reset
    await watcher.start()
    try:
        await reg.register(record("quiet"), lease_ms=800)
        await reg.register(record("beating"), lease_ms=800)
        await _until(lambda: {"quiet", "beating"} <= watcher.workers.keys())
        first_epoch = watcher.epoch
        await reg.redis.flushall()  # Redis restarted empty
        await asyncio.sleep(0.9)  # and took longer than the leases known here (renewals are silent)
        await reg.register(record("beating"), lease_ms=5000)  # its next heartbeat announces it again
        await _until(lambda: watcher.epoch != first_epoch)
        assert {"quiet", "beating"} <= watcher.workers.keys()  # not dropped: they only lost their keys
        await _until(lambda: "quiet" not in watcher.workers)  # never came back: gone with its lease
        assert watcher.workers["beating"].lease_expires_ms > registry.now_ms() + 3000
    finally:
        await watcher.stop()


async def test_only_joins_changes_and_leaves_are_announced(reg):
    async with reg.redis.pubsub() as pubsub:
        await pubsub.subscribe(registry.CHANGED)
        await reg.register(record("a"), lease_ms=5000)  # joined
        await reg.register(record("a"), lease_ms=5000)  # a heartbeat: nothing to announce
        await reg.register(record("a", model="other"), lease_ms=5000)  # a role flip
        await reg.redis.delete(registry.INDEX)  # the registry lost it (as in a Redis restart)
        await reg.register(record("a", model="other"), lease_ms=5000)  # back with the same record
        await reg.deregister("a")
        announced = []
        while len(announced) < 5 and (message := await pubsub.get_message(timeout=0.5)) is not None:
            if message["type"] == "message":
                announced.append(message["data"])
    assert announced == [b"a"] * 4


async def test_an_idle_watcher_reads_once_per_lease_and_sees_a_lapsed_lease_at_once(reg):
    reads = 0
    read = reg.read

    async def counted_read(known=None):
        nonlocal reads
        reads += 1
        return await read(known)

    reg.read = counted_read
    await reg.register(record("beating"), lease_ms=1000)
    watcher = registry.Watcher(reg, min_interval_s=0.01)
    await watcher.start()
    try:
        loop = asyncio.get_running_loop()
        until = loop.time() + 2.0
        while loop.time() < until:  # two leases; the heartbeat renews without announcing
            await reg.register(record("beating"), lease_ms=1000)
            await asyncio.sleep(0.3)
        assert reads <= 6  # one per lease run-out, one after subscribing, the first: polling made 200
        await reg.register(record("dying"), lease_ms=400)  # announced, then never renewed
        await _until(lambda: "dying" in watcher.workers, timeout_s=1.0)
        await _until(lambda: "dying" not in watcher.workers, timeout_s=0.8)
    finally:
        await watcher.stop()


async def _until(condition, timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_more_concurrent_commands_than_connections_wait_for_one(redis_url):
    client = registry.connect(redis_url, max_connections=4)
    try:
        assert await asyncio.gather(*(client.ping() for _ in range(200))) == [True] * 200
    finally:
        await client.aclose()


async def test_clients_pack_commands_as_redis_py_does(redis_url):
    client = registry.connect(redis_url)
    connection = client.connection_pool.make_connection()
    assert isinstance(connection, registry.HiredisPackingConnection)
    stock = redis.asyncio.Connection()
    commands = [
        ("SET", "k", b"\xffbytes", "PX", 5000),
        ("FCALL", "f", 2, "a", b"b", 1.5, -7),
        ("CLIENT SETINFO", "x", "y"),
    ]
    for args in commands:
        assert b"".join(connection.pack_command(*args)) == b"".join(stock.pack_command(*args))
    # and a real Redis understands them
    await client.set("k", b"\xff", px=5000)
    assert await client.get("k") == b"\xff"
    await client.aclose()


@pytest.mark.parametrize(
    "url, cls",
    [
        ("redis://:pw@127.0.0.1:6390/0", registry.HiredisPackingConnection),
        ("rediss://:pw@127.0.0.1:6390/0?ssl_ca_certs=/ca.crt", registry.HiredisPackingSSLConnection),
        ("unix://:pw@/run/redis.sock?db=0", registry.HiredisPackingUnixConnection),
    ],
)
def test_the_connection_follows_the_urls_scheme_and_packs_with_hiredis(url, cls):
    """rediss:// must really be TLS (a forced TCP class once made it plain text) and unix:// a socket."""
    connection = registry.connect(url).connection_pool.make_connection()
    assert type(connection) is cls and isinstance(connection, registry.HiredisPacking)
    assert connection.password == "pw"
    if cls is registry.HiredisPackingSSLConnection:
        assert connection.ca_certs == "/ca.crt"


async def test_a_watcher_stops_when_a_change_is_announced_as_it_is_stopped(reg):
    """A worker deregisters as the services stop, so the announcement and the cancel meet: the
    cancel was lost, and the router and kvindex ran on until `kvmesh up` killed them."""
    watcher = registry.Watcher(reg, min_interval_s=0.01)
    await watcher.start()
    await asyncio.sleep(0.05)  # the loop waits for an announcement
    watcher._announced.set()
    await asyncio.wait_for(watcher.stop(), 2.0)
    assert all(task.done() for task in watcher._tasks)
