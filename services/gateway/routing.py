"""Who decides where a request runs: this gateway itself while it has few requests in flight, the
router service otherwise.

At low load each request would pay a hop to the router process and its wake-up on both sides; the
decision in process (kvmesh/routing, the router service's own library, over the same Redis index
and shared load) saves them. Under load the gateway's single core is the busiest in the mesh, and
the router's process decides beside it on another core. Both count their load in the same shared
load in Redis, so each sees the other's. A request's MarkPrefilled and Release go to whichever
decided it."""

from __future__ import annotations

from opentelemetry import trace

from kvmesh import telemetry
from kvmesh.routing.router import Router
from kvmesh.v1 import router_pb2
from services.gateway.router_client import RouterClient, route_request

TRACER = trace.get_tracer("kvmesh.gateway")


class Routing:
    def __init__(self, remote: RouterClient, local: Router | None = None, in_process_below: int = 0):
        """`in_process_below`: route in process while fewer requests than this are in flight here."""
        self.remote = remote
        self.local = local
        self.in_process_below = in_process_below if local is not None else 0
        self._in_process: dict[str, bool] = {}  # request id → decided here, until Release

    async def route(self, *args, **kwargs) -> router_pb2.RouteResponse:
        """The arguments of router_client.route_request."""
        request = route_request(*args, **kwargs)
        request_id = request.request_id
        in_process = len(self._in_process) < self.in_process_below
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
        await self.remote.close()
