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

# What a stream's queue carries: a request, the exception its reading raised, or None at the end.
Item = Any


class Draining(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        self._draining = False
        self._streams: set[asyncio.Queue[Item]] = set()  # the queue of each open client stream

    async def begin(self) -> None:
        """Every client stream, open or new, ends at its next message (kvmesh.grpc_server.drain's `before_stop`)."""
        self._draining = True
        for queue in self._streams:
            queue.put_nowait(None)

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
        """`requests` until the client closes its side or the drain begins. One task a stream reads
        them into a queue that begin() ends: racing each read with the drain took a task and a wait
        a message, on the hot path of every request. The queue is not bounded: the reading may run
        ahead of the handler, which Router.Session does not let happen (it reads as messages come)."""
        if self._draining:
            return
        queue: asyncio.Queue[Item] = asyncio.Queue()
        pump = asyncio.ensure_future(_pump(requests, queue))
        pump.add_done_callback(lambda _: queue.put_nowait(None if pump.cancelled() else pump.exception()))
        self._streams.add(queue)
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item  # the call's own failure, as reading it here would have raised
                yield item
        finally:
            self._streams.discard(queue)
            pump.cancel()


async def _pump(requests: AsyncIterator[Any], queue: asyncio.Queue[Item]) -> None:
    async for request in requests:
        queue.put_nowait(request)
