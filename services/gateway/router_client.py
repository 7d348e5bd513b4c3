"""The routers, as the gateway sees them: a Router.Session to each (router_endpoint.py), Routes
spread over the healthy ones by the fewest outstanding (taking turns on a tie).

When a router's session breaks, no request fails for it: its Routes waiting go to another router
(one with the same request id replaces any count the lost one made in the shared load), the
MarkPrefilled and Release it may not have applied are sent again to another (both are idempotent
in the shared load), and the bookkeeping of the requests it routed goes to a live one. While a
router is healthy, a request's bookkeeping goes to the router that routed it, in order after the
Route. With no router healthy, a Route waits for one (up to ROUTE_TIMEOUT_S from its start), also
one whose session was lost with no other router left; bookkeeping is held."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from google.protobuf import wrappers_pb2
from prometheus_client import Counter

from kvmesh import auth
from kvmesh.errors import Unavailable
from kvmesh.tls import MutualTls
from kvmesh.v1 import router_pb2
from services.gateway.router_endpoint import RouterEndpoint
from services.gateway.router_session import SessionLost

ROUTE_TIMEOUT_S = 5.0
RETRIES = Counter("kvmesh_gateway_route_retries", "Routes sent to another router after theirs was lost")


def route_request(
    model: str,
    request_id: str,
    num_tokens: int,
    block_hashes: list[int],
    block_size: int,
    trace_headers: dict[str, str],
    exclude: list[str] = (),
    aggregated_only: bool = False,
) -> router_pb2.RouteRequest:
    return router_pb2.RouteRequest(
        model=model,
        request_id=request_id,
        num_tokens=num_tokens,
        block_hashes=block_hashes,
        block_size=block_size,
        exclude_worker_ids=exclude,
        aggregated_only=aggregated_only,
        trace_context=trace_headers,
    )


class RouterClient:
    def __init__(
        self,
        addresses: str,
        tls: MutualTls | None = None,
        mesh_token: str = "",
        on_settings: Callable[[router_pb2.RoutingSettings], None] | None = None,
    ):
        """`addresses`: one router's host:port, or several comma-separated (--router-address).
        `mesh_token`: shown to routers that check callers (kvmesh/auth.py). `on_settings`: told how
        each router decides, when its session opens (services/gateway/routing.py)."""
        metadata = auth.bearer(mesh_token)
        self.endpoints = [
            RouterEndpoint(a.strip(), self._lost, self._recovered, tls, metadata, on_settings)
            for a in addresses.split(",")
        ]
        self._owners: dict[str, RouterEndpoint] = {}  # request id → the router that routed it, until Release
        self._held: list[router_pb2.SessionRequest] = []  # bookkeeping while no router is healthy
        self._recovery = asyncio.Condition()

    async def route(self, request: router_pb2.RouteRequest) -> router_pb2.RouteResponse:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ROUTE_TIMEOUT_S
        tried: set[RouterEndpoint] = set()  # each router once, and once more if all were lost (below)
        lost: SessionLost | None = None
        tried_again = False
        while True:
            if lost is not None and not tried_again and self._pick(tried) is None:
                # No other router to go to (the only one drains or restarts): wait for one to come
                # back, as a Route begun with none healthy does. Once: a request that breaks routers stops.
                tried.clear()
                tried_again = True
            if (endpoint := await self._healthy_one(tried, deadline)) is None:
                break
            if lost is not None:
                RETRIES.inc()
            tried.add(endpoint)
            endpoint.outstanding += 1
            endpoint.picked += 1
            try:
                answer = await endpoint.session().route(request, max(deadline - loop.time(), 0.001))
            except SessionLost as e:
                lost = e
                continue
            finally:
                endpoint.outstanding -= 1
            endpoint.answered()
            self._owners[request.request_id] = endpoint
            return answer
        if lost is not None:
            raise lost
        raise Unavailable(f"no router answers (at {', '.join(e.address for e in self.endpoints)})")

    def _pick(self, tried: set[RouterEndpoint]) -> RouterEndpoint | None:
        candidates = [e for e in self.endpoints if e.healthy and e not in tried]
        return min(candidates, key=lambda e: (e.outstanding, e.picked), default=None)

    async def _healthy_one(self, tried: set[RouterEndpoint], deadline: float) -> RouterEndpoint | None:
        """A healthy router not tried yet, waiting for one to recover until `deadline`; None if
        every router was tried or none recovers in time."""
        if (endpoint := self._pick(tried)) is not None or len(tried) == len(self.endpoints):
            return endpoint
        async with self._recovery:
            try:
                await asyncio.wait_for(
                    self._recovery.wait_for(lambda: self._pick(tried) is not None),
                    deadline - asyncio.get_running_loop().time(),
                )
            except TimeoutError:
                return None
        return self._pick(tried)

    def mark_prefilled(self, request_id: str) -> None:
        """Never holds up a token stream; a lost one is bounded by the router's in-flight lease."""
        self._send(self._owners.get(request_id), router_pb2.SessionRequest(prefilled=request_id))

    def release(self, request_id: str, cached_tokens: int | None = None) -> None:
        """`cached_tokens`: the prompt tokens the engine found cached, when the request ran to its
        end on the worker it was routed to; the router checks its prediction against them."""
        if cached_tokens is None:
            message = router_pb2.SessionRequest(released=request_id)
        else:
            actual = wrappers_pb2.UInt32Value(value=cached_tokens)
            message = router_pb2.SessionRequest(
                release=router_pb2.ReleaseRequest(request_id=request_id, cached_tokens=actual)
            )
        self._send(self._owners.pop(request_id, None), message)

    def _send(self, owner: RouterEndpoint | None, message: router_pb2.SessionRequest) -> None:
        target = owner if owner is not None and owner.healthy else self._pick(set())
        if target is None:
            self._held.append(message)
        else:
            target.session().send(message)

    def _lost(self, endpoint: RouterEndpoint, reason: str, unsettled: list[router_pb2.SessionRequest]) -> None:
        for message in unsettled:
            self._send(None, message)

    async def _recovered(self, endpoint: RouterEndpoint) -> None:
        held, self._held = self._held, []
        for message in held:
            self._send(None, message)
        async with self._recovery:
            self._recovery.notify_all()

    async def close(self) -> None:
        await asyncio.gather(*(e.close() for e in self.endpoints))
