"""The router, as the gateway sees it."""

from __future__ import annotations

from kvmesh import auth, grpc_server
from kvmesh.tls import MutualTls
from kvmesh.v1 import router_pb2, router_pb2_grpc
from services.gateway.router_session import RouterSession

ROUTE_TIMEOUT_S = 5.0


class RouterClient:
    """Routes over one Router.Session stream (services/gateway/router_session.py), opened on first
    use and again after it breaks."""

    def __init__(self, address: str, tls: MutualTls | None = None, mesh_token: str = ""):
        """`mesh_token`: shown to a router that checks callers (kvmesh/auth.py)."""
        self.channel = grpc_server.channel(address, tls)
        self.metadata = auth.bearer(mesh_token)
        self.stub = router_pb2_grpc.RouterStub(self.channel)
        self._session: RouterSession | None = None

    def _open(self) -> RouterSession:
        if self._session is None or self._session.closed:
            self._session = RouterSession(self.stub, self.metadata)
        return self._session

    async def route(
        self,
        model: str,
        request_id: str,
        num_tokens: int,
        block_hashes: list[int],
        block_size: int,
        trace_headers: dict[str, str],
        exclude: list[str] = (),
        aggregated_only: bool = False,
    ) -> router_pb2.RouteResponse:
        request = router_pb2.RouteRequest(
            model=model,
            request_id=request_id,
            num_tokens=num_tokens,
            block_hashes=block_hashes,
            block_size=block_size,
            exclude_worker_ids=exclude,
            aggregated_only=aggregated_only,
            trace_context=trace_headers,
        )
        return await self._open().route(request, ROUTE_TIMEOUT_S)

    def mark_prefilled(self, request_id: str) -> None:
        """Never holds up a token stream; a lost one is bounded by the router's in-flight lease."""
        self._open().send(router_pb2.SessionRequest(prefilled=request_id))

    def release(self, request_id: str) -> None:
        self._open().send(router_pb2.SessionRequest(released=request_id))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.drain()
            await self._session.close()
        await self.channel.close()
