"""Serving a gRPC service: port 0 binds a free port, the standard health service, telemetry
interceptors, the start-up heap frozen out of the garbage collector, SIGTERM/SIGINT → NOT_SERVING
→ drain → stop(grace)."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from kvmesh.errors import KvmeshError
from kvmesh.gc_heap import freeze_startup_heap
from kvmesh.telemetry import ClientInterceptor, ServerInterceptor

log = logging.getLogger(__name__)


@dataclass
class Served:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer


async def serve(service_name: str, host: str, port: int, register: Callable[[grpc.aio.Server], None]) -> Served:
    server = grpc.aio.server(interceptors=[ServerInterceptor(service_name)])
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise SystemExit(f"{service_name}: cannot listen on {host}:{port}")
    await server.start()
    freeze_startup_heap()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    log.info("%s listening on %s:%d", service_name, host, bound)
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


def channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, interceptors=[ClientInterceptor()])


async def abort_with(context: grpc.aio.ServicerContext, error: KvmeshError) -> None:
    await context.abort(error.grpc_code, error.message)
