"""The worker registry in Redis: each live worker holds a lease that it renews.

Layout (one hash tag, so the keys sit in one Redis Cluster slot and MGET works there too):
  kvmesh:{registry}:workers          ZSET  worker id → lease expiry (unix ms)
  kvmesh:{registry}:worker:<id>      STRING serialized kvmesh.v1.WorkerRecord, expiring with the lease
  kvmesh:{registry}:epoch            STRING random id set by the first reader: a new value means
                                     Redis lost the registry (restarted empty), not that workers left
  kvmesh:{registry}:assign:<id>      STRING the Triton model a worker is asked to run instead of its
                                     own (a role change, from the planner); the worker deletes it
  kvmesh:{registry}:changed          channel: a worker joined, changed its record or left (heartbeats
                                     that change nothing are not announced)
The other services' metrics endpoints sit beside them, under leases too: kvmesh/announce.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import hiredis
import redis.asyncio as redis
from prometheus_client import Gauge

from kvmesh import worker_ids
from kvmesh.tls import MutualTls
from kvmesh.v1 import worker_pb2

log = logging.getLogger(__name__)

INDEX = "kvmesh:{registry}:workers"
RECORD = "kvmesh:{registry}:worker:"
EPOCH = "kvmesh:{registry}:epoch"
ASSIGN = "kvmesh:{registry}:assign:"
CHANGED = "kvmesh:{registry}:changed"
# The roles an assignment may move between: NIXL's side channel is set up when Triton starts, for
# prefill and decode workers only.
CHANGEABLE_ROLES = (worker_pb2.ROLE_PREFILL, worker_pb2.ROLE_DECODE)


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class LiveWorker:
    record: worker_pb2.WorkerRecord
    lease_expires_ms: int
    raw: bytes = b""  # the record as stored, to tell when it changed


class Registry:
    def __init__(self, client: redis.Redis):
        self.redis = client
        self._announced: dict[str, bytes] = {}  # per worker registered here: the record last announced

    async def register(self, record: worker_pb2.WorkerRecord, lease_ms: int) -> None:
        """Also the heartbeat: writing the record again renews the lease. A new or changed record
        is announced on CHANGED; a renewal is not, so watchers stay asleep between changes. An id
        outside kvmesh.worker_ids' rule is refused (ValueError)."""
        worker_ids.check(record.id)
        blob = record.SerializeToString()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(RECORD + record.id, blob, px=lease_ms)
            pipe.zadd(INDEX, {record.id: now_ms() + lease_ms})
            changed = self._announced.get(record.id) != blob
            if changed:
                pipe.publish(CHANGED, record.id)
            replies = await pipe.execute()
        if replies[1] and not changed:  # the ZADD added the id: the registry had lost it (expired lease, Redis restart)
            await self.redis.publish(CHANGED, record.id)
        self._announced[record.id] = blob

    async def deregister(self, worker_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(RECORD + worker_id)
            pipe.zrem(INDEX, worker_id)
            pipe.publish(CHANGED, worker_id)
            await pipe.execute()
        self._announced.pop(worker_id, None)

    async def assign(self, worker_id: str, triton_model: str, ttl_ms: int) -> None:
        """Asks a worker to run `triton_model` from its repository; the request lapses after
        `ttl_ms` if the worker never takes it up."""
        await self.redis.set(ASSIGN + worker_id, triton_model, px=ttl_ms)

    async def assignment(self, worker_id: str) -> str | None:
        value = await self.redis.get(ASSIGN + worker_id)
        return None if value is None else _text(value)

    async def clear_assignment(self, worker_id: str) -> None:
        await self.redis.delete(ASSIGN + worker_id)

    async def read(self, known: Mapping[str, LiveWorker] | None = None) -> Snapshot:
        """The registry's epoch and live workers. One round trip unless a worker joined since
        `known` (the caller's last read), whose records are read alongside; a record that did not
        change is not parsed again. The first caller after Redis lost its data makes a new epoch."""
        known = known or {}
        token = secrets.token_hex(8)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(EPOCH, token, nx=True, get=True)
            pipe.zremrangebyscore(INDEX, "-inf", now_ms())
            pipe.zrange(INDEX, 0, -1, withscores=True)
            if known:
                pipe.mget([RECORD + i for i in known])
            replies = await pipe.execute()
        epoch = _text(replies[0]) if replies[0] is not None else token
        blobs = dict(zip(known, replies[3], strict=True)) if known else {}
        members = [(_text(m), int(expiry)) for m, expiry in replies[2]]
        if joined := [i for i, _ in members if i not in blobs]:
            blobs.update(zip(joined, await self.redis.mget([RECORD + i for i in joined]), strict=True))
        live = []
        for worker_id, expiry in members:
            blob = blobs[worker_id]
            if blob is None:  # the record expired between the two calls
                continue
            seen = known.get(worker_id)
            record = seen.record if seen is not None and seen.raw == blob else worker_pb2.WorkerRecord.FromString(blob)
            live.append(LiveWorker(record, expiry, blob))
        return Snapshot(epoch, live)


@dataclass(frozen=True)
class Snapshot:
    epoch: str
    workers: list[LiveWorker]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def connect(url: str, timeout_s: float = 2.0, max_connections: int = 64, tls: MutualTls | None = None) -> redis.Redis:
    """A client whose commands wait (up to `timeout_s`) for one of `max_connections` connections:
    redis-py's default pool fails the 101st concurrent command at once ("Too many connections"),
    which under load looked like Redis being down. The URL's scheme picks the connection (TCP,
    TLS for rediss://, a Unix socket), each packing with hiredis; credentials and ssl_* options
    come from the URL. Over rediss://, `tls` is this process's own certificate for a Redis that
    asks for one (and its CA)."""
    scheme = url.split("://", 1)[0].lower()
    own = tls.redis_options() if tls and scheme == "rediss" else {}
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout_s, socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s, health_check_interval=10,
        connection_class=CONNECTION_CLASSES.get(scheme, HiredisPackingConnection),  # from_url refuses other schemes
        **own,
    )  # fmt: skip
    return redis.Redis.from_pool(pool)


class HiredisPacking:
    """Packs each command with hiredis (C). redis-py's asyncio connection packs in Python and
    re-joins its buffer once per argument: a match or a KV-event batch carries hundreds of keys
    (2,048 keys: 0.93 ms against 0.24)."""

    def pack_command(self, *args):
        name = args[0]
        if (isinstance(name, str) and " " in name) or (isinstance(name, bytes) and b" " in name):
            args = (*name.split(), *args[1:])  # "CLIENT SETINFO": Redis wants the words apart
        return [hiredis.pack_command(args)]


class HiredisPackingConnection(HiredisPacking, redis.Connection):
    pass


class HiredisPackingSSLConnection(HiredisPacking, redis.SSLConnection):
    pass


class HiredisPackingUnixConnection(HiredisPacking, redis.UnixDomainSocketConnection):
    pass


CONNECTION_CLASSES = {
    "redis": HiredisPackingConnection,
    "rediss": HiredisPackingSSLConnection,
    "unix": HiredisPackingUnixConnection,
}


# A service run as several processes (the gateway's --procs) reports the most workers any live one
# sees, and 0 when any live one's last read failed.
LIVE_WORKERS = Gauge("kvmesh_registry_live_workers", "Workers in the registry", multiprocess_mode="livemax")
REGISTRY_OK = Gauge("kvmesh_registry_reachable", "1 when the last registry read worked", multiprocess_mode="livemin")


class Watcher:
    """The live worker set, kept from the registry in the background.

    The registry is read when a worker announces a change on CHANGED, when a known lease runs out
    (a worker that died without deregistering), and every RESYNC_S in case an announcement was
    missed; never more often than every `min_interval_s`. Idle, that is one read per lease period:
    polling every 250 ms instead would take each service's CPU from the engines sharing the cores.

    If Redis is unreachable the last known set is kept (and said so in logs and metrics) until
    it answers again: whoever reads it keeps going on what we knew. If Redis comes back empty
    (a new epoch), the workers last seen stay until their leases would have run out, and at least
    RESYNC_S: they re-register on their next heartbeat, and requests meanwhile still find them.
    """

    RESYNC_S = 5.0

    def __init__(self, registry: Registry, min_interval_s: float):
        self.registry = registry
        self.min_interval_s = min_interval_s
        self.workers: dict[str, LiveWorker] = {}
        self.reachable = True
        self.epoch: str | None = None
        self._carried: dict[str, LiveWorker] = {}  # seen before a registry reset, not re-registered yet
        self._announced = asyncio.Event()
        self._on_change: list[Callable[[], None]] = []
        self._tasks: list[asyncio.Task] = []
        self._stopping = False

    def on_change(self, callback: Callable[[], None]) -> None:
        """Calls `callback` whenever the worker set, a record or the epoch changes."""
        self._on_change.append(callback)

    async def refresh(self) -> None:
        try:
            snapshot = await self.registry.read(self.workers)
        except Exception as e:  # noqa: BLE001 - any Redis failure means "keep what we knew"
            if self.reachable:  # log once per outage
                log.warning("registry unreachable; routing on the %d workers last seen: %s", len(self.workers), e)
            self.reachable = False
            REGISTRY_OK.set(0)
            return
        if not self.reachable:
            log.info("registry reachable again")
        self.reachable = True
        REGISTRY_OK.set(1)
        epoch, live = snapshot.epoch, {w.record.id: w for w in snapshot.workers}
        now = now_ms()
        if self.epoch is not None and epoch != self.epoch:
            log.warning("registry reset (Redis lost its data): keeping %d workers for their leases", len(self.workers))
            # Renewals are not announced, so a lease known here may be a read period old, and it
            # ran on while Redis was away: each worker gets until its next heartbeat can have
            # registered it again (a fresh Redis restarted by `kvmesh up` had the mesh drop them all).
            grace = now + int(self.RESYNC_S * 1000)
            self._carried = {
                i: replace(w, lease_expires_ms=max(w.lease_expires_ms, grace)) for i, w in self.workers.items()
            }
        self._carried = {i: w for i, w in self._carried.items() if i not in live and w.lease_expires_ms > now}
        live = {**self._carried, **live}
        for joined in live.keys() - self.workers.keys():
            log.info(
                "worker joined: %s (%s at %s)",
                joined,
                live[joined].record.model,
                live[joined].record.triton_grpc_address,
            )
        for left in self.workers.keys() - live.keys():
            log.info("worker left: %s", left)
        changed = (
            epoch != self.epoch
            or live.keys() != self.workers.keys()
            or any(w.record is not self.workers[i].record for i, w in live.items())
        )
        self.epoch = epoch
        self.workers = live
        LIVE_WORKERS.set(len(live))
        if changed:
            for callback in self._on_change:
                callback()

    async def start(self) -> None:
        await self.refresh()
        self._tasks = [asyncio.create_task(self._listen()), asyncio.create_task(self._loop())]

    async def _loop(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._next_read_in()):
                    await self._announced.wait()
            self._announced.clear()
            await self.refresh()
            await asyncio.sleep(self.min_interval_s)

    def _next_read_in(self) -> float:
        if not self.reachable:
            return 0.0  # _loop's pause paces the retries
        soonest = min((w.lease_expires_ms for w in self.workers.values()), default=None)
        if soonest is None:
            return self.RESYNC_S
        return min(self.RESYNC_S, max(0.0, (soonest - now_ms()) / 1000))

    async def _listen(self) -> None:
        while not self._stopping:
            try:
                async with self.registry.redis.pubsub() as pubsub:
                    await pubsub.subscribe(CHANGED)
                    self._announced.set()  # what was announced while not subscribed is lost
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            self._announced.set()
            except Exception:  # noqa: BLE001 - Redis gone: the read says so; subscribe again later
                self._announced.set()
            await asyncio.sleep(self.min_interval_s)

    async def stop(self) -> None:
        # Cancelling alone is not enough: a cancel that meets an announcement is lost on the way
        # (the loop goes back to waiting, and the router and kvindex run on until `kvmesh up`
        # kills them); the flag and the wake-up end the loops whatever became of it.
        self._stopping = True
        self._announced.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
