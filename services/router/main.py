"""settings → dependencies → serve."""

from __future__ import annotations

import asyncio

from kvmesh import grpc_server, registry, telemetry
from kvmesh.registry import Watcher
from kvmesh.settings import load
from kvmesh.v1 import router_pb2_grpc
from services.router.config import RouterSettings
from services.router.framework.plugins import build
from services.router.inflight import InFlight
from services.router.servicer import RouterServicer


async def run(settings: RouterSettings) -> None:
    telemetry.setup_tracing("router")
    metrics_port = telemetry.start_metrics_server(settings.host, settings.metrics_port)
    workers = Watcher(registry.Registry(registry.connect(settings.redis_url)), settings.refresh_ms / 1000)
    await workers.start()
    profiles = {name: build(name, spec) for name, spec in settings.policies.items()}
    servicer = RouterServicer(workers, InFlight(settings.request_lease_s), profiles, settings.policy)
    served = await grpc_server.serve(
        "router", settings.host, settings.port, lambda s: router_pb2_grpc.add_RouterServicer_to_server(servicer, s)
    )
    print(f"router ready on {settings.host}:{served.port} (metrics on :{metrics_port}/metrics)", flush=True)
    await grpc_server.wait_for_signal()
    await grpc_server.drain(served, grace_s=2.0, before_stop=workers.stop)


def main() -> None:
    asyncio.run(run(load(RouterSettings)))
