"""The router, as the gateway sees it."""

from __future__ import annotations

import asyncio
import logging

import grpc

from kvmesh import grpc_server
from kvmesh.errors import from_rpc_error
from kvmesh.v1 import router_pb2, router_pb2_grpc

log = logging.getLogger(__name__)

ROUTE_TIMEOUT_S = 5.0


class RouterClient:
    def __init__(self, address: str):
        self.channel = grpc_server.channel(address)
        self.stub = router_pb2_grpc.RouterStub(self.channel)
        self._background: set[asyncio.Task] = set()

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
        )
        try:
            return await self.stub.Route(
                request,
                timeout=ROUTE_TIMEOUT_S,
                metadata=tuple(trace_headers.items()),
            )
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def mark_prefilled(self, request_id: str) -> None:
        self._fire(self.stub.MarkPrefilled(router_pb2.MarkPrefilledRequest(request_id=request_id), timeout=2))

    def release(self, request_id: str) -> None:
        self._fire(self.stub.Release(router_pb2.ReleaseRequest(request_id=request_id), timeout=2))

    def _fire(self, call) -> None:
        """Bookkeeping calls never hold up a token stream; a lost one is bounded by the router's lease."""

        async def run() -> None:
            try:
                await call
            except grpc.RpcError as e:
                log.warning("router bookkeeping failed: %s", e.details())

        task = asyncio.ensure_future(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.channel.close()
