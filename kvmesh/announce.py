"""Where each service's /metrics is, in the registry's Redis under a lease the service renews:
what Prometheus' service discovery reads (kvmesh/prometheus_sd.py). Workers announce nothing
here: their registry record names their Triton's metrics (`WorkerRecord.triton_metrics_address`).

  kvmesh:{registry}:services   ZSET  an Endpoint (msgspec JSON) → lease expiry (unix ms)

The member is the endpoint itself: announcing and renewing are one ZADD, a stop one ZREM, and a
reader drops expired members as it reads, as the worker registry does. The id is the kind and
the address, the same across restarts, so a restarted service continues its own series. A
gateway's --procs N processes share their port and each one's /metrics sums them all: they
announce the same member, one target; one of them stopping takes it out until another renews it
(a third of a lease).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec
import redis.asyncio as redis

from kvmesh import registry
from kvmesh.net import hostport
from kvmesh.settings import CommonSettings
from kvmesh.tls import MutualTls

log = logging.getLogger(__name__)

SERVICES = "kvmesh:{registry}:services"
KINDS = ("gateway", "router", "kvindex", "planner")
LEASE_MS = 5000  # as a worker's default lease: a service killed outright is gone within it


class Endpoint(msgspec.Struct, array_like=True, frozen=True):
    kind: str  # one of KINDS
    id: str
    address: str  # host:port serving /metrics
    scheme: str = "http"


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Endpoint).decode


def endpoint(kind: str, host: str, port: int, scheme: str = "http") -> Endpoint:
    if kind not in KINDS:
        raise ValueError(f"{kind!r}: a service kind is one of {', '.join(KINDS)}")
    address = hostport(host, port)
    return Endpoint(kind, f"{kind}@{address}", address, scheme)


async def announce(client: redis.Redis, announced: Endpoint, lease_ms: int = LEASE_MS) -> None:
    """Also the renewal."""
    await client.zadd(SERVICES, {_encode(announced): registry.now_ms() + lease_ms})


async def withdraw(client: redis.Redis, announced: Endpoint) -> None:
    await client.zrem(SERVICES, _encode(announced))


async def read(client: redis.Redis) -> list[Endpoint]:
    """The endpoints whose lease runs; one round trip."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.zremrangebyscore(SERVICES, "-inf", registry.now_ms())
        pipe.zrange(SERVICES, 0, -1)
        _, members = await pipe.execute()
    found = []
    for member in members:
        try:
            found.append(_decode(member))
        except msgspec.DecodeError:  # another version's member: not ours to drop, its lease ends it
            log.warning("unreadable service announcement: %r", member)
    return found


class Announcement:
    """One service's endpoint, announced from start() to stop() and renewed every third of its
    lease meanwhile. Redis being away costs the announcement, never the service: a failed renewal
    is logged and tried again at the next one."""

    def __init__(self, client: redis.Redis, announced: Endpoint, lease_ms: int = LEASE_MS):
        self.client, self.endpoint, self.lease_ms = client, announced, lease_ms
        self._renewing: asyncio.Task | None = None

    @classmethod
    def of(cls, settings: CommonSettings, kind: str, port: int, scheme: str = "http") -> Announcement:
        """The service's metrics at its advertised address, over a Redis client of its own."""
        client = registry.connect(settings.redis_url, tls=MutualTls.of(settings))
        return cls(client, endpoint(kind, settings.advertise_host, port, scheme))

    def start(self) -> Announcement:
        self._renewing = asyncio.create_task(self._renew())
        return self

    async def _renew(self) -> None:
        failing = False
        while True:
            try:
                await announce(self.client, self.endpoint, self.lease_ms)
                failing = False
            except Exception as e:  # noqa: BLE001 - keep trying; Prometheus loses the target meanwhile
                if not failing:  # once per outage
                    log.warning("could not announce %s's metrics: %s", self.endpoint.id, e)
                failing = True
            await asyncio.sleep(self.lease_ms / 3000)

    async def stop(self) -> None:
        if self._renewing:
            self._renewing.cancel()
            await asyncio.gather(self._renewing, return_exceptions=True)
        with contextlib.suppress(Exception):  # Redis gone: the lease ends it
            await withdraw(self.client, self.endpoint)
        await self.client.aclose()
