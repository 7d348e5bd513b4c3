"""A router that stops ends its client streams as if each client had closed its side: a `Session`
then answers the Routes it has begun and ends with its summary, so that a gateway learns at once
to open a session elsewhere, and the router need not wait out its drain timeout on streams that
never end by themselves. A message that arrives after the drain began is not read (a Route on it
fails on the gateway as its session ends; a lost Release is bounded by the request lease)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc


class Draining(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        self._started = asyncio.Event()

    async def begin(self) -> None:
        """Every client stream, open or new, ends at its next message (kvmesh.grpc_server.drain's `before_stop`)."""
        self._started.set()

    async def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or handler.stream_stream is None:
            return handler
        behaviour = handler.stream_stream

        async def stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for response in behaviour(self._until_drain(requests), context):
                yield response

        return grpc.stream_stream_rpc_method_handler(stream, handler.request_deserializer, handler.response_serializer)

    async def _until_drain(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        draining = asyncio.ensure_future(self._started.wait())
        try:
            while True:
                message = asyncio.ensure_future(anext(requests))
                await asyncio.wait({message, draining}, return_when=asyncio.FIRST_COMPLETED)
                if not message.done():
                    message.cancel()
                    return
                try:
                    request = message.result()
                except StopAsyncIteration:
                    return
                yield request
        finally:
            draining.cancel()
