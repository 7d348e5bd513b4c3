"""Who decides where a request runs: this gateway itself while it has few requests in flight, the
router service otherwise.

At low load each request would pay a hop to the router process and its wake-up on both sides; the
decision in process (kvmesh/routing, the router service's own library, over the same Redis index
and shared load) saves them. Under load the gateway's single core is the busiest in the mesh, and
the router's process decides beside it on another core. Both count their load in the same shared
load in Redis, so each sees the other's. A request's MarkPrefilled and Release go to whichever
decided it.

The gateway decides as the router does: each router session first asks the router for its routing
settings, and the in-process router is built from the first answer. Routers that answer
differently (a router restarted with other settings) turn routing in process off."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from opentelemetry import trace

from kvmesh import telemetry
from kvmesh.routing.config import RoutingConfig
from kvmesh.routing.router import Router
from kvmesh.v1 import router_pb2
from services.gateway.router_client import RouterClient, route_request

log = logging.getLogger(__name__)
TRACER = trace.get_tracer("kvmesh.gateway")
OnSettings = Callable[[router_pb2.RoutingSettings], None]
# A router of the given config, and what stops its background work.
BuildLocal = Callable[[RoutingConfig], Awaitable[tuple[Router, Callable[[], Awaitable[None]]]]]


class Routing:
    def __init__(
        self, remote_of: Callable[[OnSettings | None], RouterClient], build_local: BuildLocal, in_process_below: int
    ):
        """`remote_of(on_settings)`: the router client, told each router's settings when on_settings
        is given. `in_process_below`: route in process while fewer requests than this are in flight
        here; 0: never."""
        self.in_process_below = in_process_below
        self.remote = remote_of(self._adopt if in_process_below else None)
        self.local: Router | None = None
        self._build_local = build_local
        self._adopted: router_pb2.RoutingSettings | None = None
        self._building: asyncio.Task | None = None
        self._stop_local: Callable[[], Awaitable[None]] | None = None
        self._in_process: dict[str, bool] = {}  # request id → decided here, until Release

    def _adopt(self, settings: router_pb2.RoutingSettings) -> None:
        if self._adopted is None:
            self._adopted = settings
            self._building = asyncio.ensure_future(self._build(settings))
        elif settings != self._adopted and self.in_process_below:
            log.warning("routers decide differently (%s, then %s): routing in process off", self._adopted, settings)
            self.in_process_below = 0

    async def _build(self, settings: router_pb2.RoutingSettings) -> None:
        try:
            self.local, self._stop_local = await self._build_local(RoutingConfig.of_proto(settings))
        except Exception:
            log.exception("routing in process off: its router could not be built")
            self.in_process_below = 0

    async def route(self, *args, **kwargs) -> router_pb2.RouteResponse:
        """The arguments of router_client.route_request."""
        request = route_request(*args, **kwargs)
        request_id = request.request_id
        in_process = self.local is not None and len(self._in_process) < self.in_process_below
        self._in_process[request_id] = in_process  # counted from now: Routes may overlap
        try:
            if not in_process:
                return await self.remote.route(request)
            parent = telemetry.extract(dict(request.trace_context))
            with TRACER.start_as_current_span("kvmesh.route", context=parent, kind=trace.SpanKind.INTERNAL):
                return await self.local.route(request)
        except BaseException:
            del self._in_process[request_id]
            raise

    def mark_prefilled(self, request_id: str) -> None:
        if self._in_process.get(request_id):
            self.local.prefilled(request_id)
        else:
            self.remote.mark_prefilled(request_id)

    def release(self, request_id: str, cached_tokens: int | None = None) -> None:
        if self._in_process.pop(request_id, False):
            self.local.released(request_id, cached_tokens)
        else:
            self.remote.release(request_id, cached_tokens)

    async def close(self) -> None:
        if self._building is not None:
            self._building.cancel()
            await asyncio.gather(self._building, return_exceptions=True)
        await self.remote.close()
        if self._stop_local is not None:
            await self._stop_local()
