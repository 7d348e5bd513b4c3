"""One router the gateway knows: its channel (with keepalive), its session (opened on use) and
whether it is healthy. A lost session makes it unhealthy at once; a probe (the standard health
Check, which a draining router answers NOT_SERVING) after a backoff of 0.1 s doubling to 2 s makes
it healthy again, and an answered Route resets the backoff."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import Counter, Gauge

from kvmesh import grpc_server
from kvmesh.tls import MutualTls
from kvmesh.v1 import router_pb2, router_pb2_grpc
from services.gateway.router_session import RouterSession

log = logging.getLogger(__name__)
UP = Gauge(
    "kvmesh_gateway_router_up", "1 while the gateway routes on this router, 0 while it is left", ["router"],
    multiprocess_mode="livemin",  # gateway --procs N: up only while every live process routes on it
)  # fmt: skip
ROUTES = Counter("kvmesh_gateway_router_routes", "Routes answered, by router", ["router"])
MIN_BACKOFF_S, MAX_BACKOFF_S = 0.1, 2.0
PROBE_TIMEOUT_S = 1.0
# gRPC's own reconnect backoff starts at 1 s and grows to 2 minutes: a restarted router would be
# found late. The probe above paces the attempts instead.
CHANNEL_OPTIONS = (
    *grpc_server.KEEPALIVE,
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)
# (the endpoint, why, the bookkeeping it may not have applied)
OnLost = Callable[["RouterEndpoint", str, list[router_pb2.SessionRequest]], None]


class RouterEndpoint:
    def __init__(
        self,
        address: str,
        on_lost: OnLost,
        on_recovered: Callable[[RouterEndpoint], Awaitable[None]],
        tls: MutualTls | None = None,
        metadata: tuple[tuple[str, str], ...] = (),
        on_settings: Callable[[router_pb2.RoutingSettings], None] | None = None,
    ):
        """`on_settings`: given, each session asks the router how it decides (router_session.py)."""
        self.address = address
        self._on_settings = on_settings
        self.channel = grpc_server.channel(address, tls, CHANNEL_OPTIONS)
        self.stub = router_pb2_grpc.RouterStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)
        self.metadata = metadata
        self.healthy = True
        self.outstanding = 0  # Routes sent, not yet answered
        self.picked = 0  # Routes ever sent: the tie-breaker that takes turns
        self._on_lost = on_lost
        self._on_recovered = on_recovered
        self._session: RouterSession | None = None
        self._backoff_s = MIN_BACKOFF_S
        self._probe: asyncio.Task | None = None
        UP.labels(address).set(1)

    def session(self) -> RouterSession:
        if self._session is None or self._session.closed:
            self._session = RouterSession(self.stub, self.metadata, self._lost, self._on_settings)
        return self._session

    def answered(self) -> None:
        ROUTES.labels(self.address).inc()
        self._backoff_s = MIN_BACKOFF_S

    def _lost(self, reason: str, unsettled: list[router_pb2.SessionRequest]) -> None:
        if self.healthy:
            log.warning("router %s left: %s; routing on the others", self.address, reason)
        self.healthy = False
        UP.labels(self.address).set(0)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self._recover())
        self._on_lost(self, reason, unsettled)

    async def _recover(self) -> None:
        while True:
            await asyncio.sleep(self._backoff_s)
            self._backoff_s = min(self._backoff_s * 2, MAX_BACKOFF_S)
            try:
                reply = await self._health.Check(
                    health_pb2.HealthCheckRequest(), timeout=PROBE_TIMEOUT_S, metadata=self.metadata
                )
            except grpc.RpcError:
                continue
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                break
        log.info("router %s answers again; routing on it", self.address)
        self.healthy = True
        UP.labels(self.address).set(1)
        await self._on_recovered(self)

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
        if self._session is not None:
            await self._session.drain()
            await self._session.close()
        await self.channel.close()
