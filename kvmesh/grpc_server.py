"""Serving a gRPC service: port 0 binds a free port, the standard health service, telemetry
interceptors, a KvmeshError ending a call as its status, the start-up heap frozen out of the
garbage collector, keepalive pings to clients, SIGTERM/SIGINT → NOT_SERVING → drain →
stop(grace); mutual TLS when given (kvmesh/tls.py), on servers and channels alike, or a server's
own credentials (the gateway's front: kvmesh.tls.FrontTls)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from kvmesh.errors import KvmeshError
from kvmesh.gc_heap import freeze_startup_heap
from kvmesh.telemetry import ClientInterceptor, ServerInterceptor
from kvmesh.tls import MutualTls

log = logging.getLogger(__name__)
# A channel's keepalive: a peer that stops answering (hung, SIGSTOPped, partitioned) fails its calls
# within about 2 s instead of never. Pings go every second while a call is open, the ack awaited 1 s.
KEEPALIVE = (
    ("grpc.keepalive_time_ms", 1000),
    ("grpc.keepalive_timeout_ms", 1000),
    ("grpc.http2.ping_timeout_ms", 1000),
    ("grpc.http2.max_pings_without_data", 0),
)
# Servers accept such pings (this is the server's setting, despite its name): by default gRPC answers
# pings more often than every 5 minutes on a quiet stream with GOAWAY "too_many_pings", which would
# break every long-lived session.
ACCEPT_PINGS = (("grpc.http2.min_ping_interval_without_data_ms", 500),)
# A server's own keepalive: a client host that vanishes (powered off, partitioned: no FIN, no RST)
# while a stream of its is open and quiet would hold the call, and what the call holds, until TCP's
# own keepalive gave up (~2 h). Pinged every 30 s, it is cut off 10 s after a ping goes unanswered
# (with the keepalive timeout alone gRPC waited for the ack its ping timeout, a minute by default).
SERVER_KEEPALIVE = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.ping_timeout_ms", 10_000),
)


@dataclass
class Served:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer


async def serve(
    service_name: str,
    host: str,
    port: int,
    register: Callable[[grpc.aio.Server], None],
    tls: MutualTls | None = None,
    max_message_bytes: int | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    credentials: grpc.ServerCredentials | None = None,
) -> Served:
    """`max_message_bytes`: a larger request message is refused by gRPC itself (RESOURCE_EXHAUSTED)
    before it is parsed; default gRPC's 4 MiB. `interceptors` run inside the error interceptor, so
    a KvmeshError they raise ends the call with its status (e.g. kvmesh/auth.py's). `credentials`,
    when given, secure the port instead of `tls` (which then serves the process's clients only)."""
    options = [
        *ACCEPT_PINGS,
        *SERVER_KEEPALIVE,
        *([("grpc.max_receive_message_length", max_message_bytes)] if max_message_bytes else []),
    ]
    # The first interceptor is the outermost: telemetry sees the status the error interceptor set.
    server = grpc.aio.server(
        interceptors=[ServerInterceptor(service_name), ErrorInterceptor(), *interceptors], options=options
    )
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"{host}:{port}"
    if credentials is None and tls:
        credentials = tls.server_credentials()
    bound = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if bound == 0:
        raise SystemExit(f"{service_name}: cannot listen on {host}:{port}")
    await server.start()
    freeze_startup_heap()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    log.info("%s listening on %s:%d%s", service_name, host, bound, " (TLS)" if credentials else "")
    return Served(server, bound, health_servicer)


async def wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def drain(served: Served, grace_s: float, before_stop: Callable[[], Awaitable[None]] | None = None) -> None:
    await served.health.enter_graceful_shutdown()
    if before_stop:
        await before_stop()
    await served.server.stop(grace_s)


def channel(address: str, tls: MutualTls | None = None, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
    """`options`: gRPC channel arguments, e.g. KEEPALIVE."""
    if tls:
        return grpc.aio.secure_channel(
            address, tls.channel_credentials(), options=list(options), interceptors=[ClientInterceptor()]
        )
    return grpc.aio.insecure_channel(address, options=list(options), interceptors=[ClientInterceptor()])


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """A KvmeshError that escapes a handler ends the call with its code and message (never a
    traceback), so servicers raise instead of aborting. Unary and streaming handlers alike; any
    other exception, cancellation included, passes untouched."""

    async def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        for kind, make in HANDLER_KINDS:
            behaviour = getattr(handler, kind)
            if behaviour is not None:
                return make(_aborting(behaviour), handler.request_deserializer, handler.response_serializer)
        return handler


HANDLER_KINDS = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
)


def _aborting(behaviour: Callable) -> Callable:
    """`behaviour` (a request or a request iterator, and the context) with its KvmeshError turned
    into the call's status; a response generator stays a generator."""
    if inspect.isasyncgenfunction(behaviour):

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for response in behaviour(request, context):
                    yield response
            except KvmeshError as e:
                await _abort(context, e)

        return stream
    if inspect.iscoroutinefunction(behaviour):

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await behaviour(request, context)
            except KvmeshError as e:
                await _abort(context, e)

        return call
    return behaviour  # a synchronous handler runs in a thread pool: not one of ours


async def _abort(context: grpc.aio.ServicerContext, e: KvmeshError) -> None:
    trailers = tuple((name.lower(), value) for name, value in e.headers.items())
    await context.abort(e.grpc_code, e.message, trailing_metadata=trailers)
