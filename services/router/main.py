"""settings → dependencies → serve; on SIGTERM or SIGINT, drain (draining.py): new calls refused,
health NOT_SERVING, the Routes in flight answered (up to --drain-timeout-s), then exit."""

from __future__ import annotations

import uvloop

from kvmesh import auth, grpc_server, registry, telemetry
from kvmesh.announce import Announcement
from kvmesh.registry import Watcher
from kvmesh.routing.assemble import assemble
from kvmesh.settings import load
from kvmesh.tls import MutualTls
from kvmesh.v1 import router_pb2_grpc
from services.router.config import RouterSettings
from services.router.draining import Draining
from services.router.servicer import RouterServicer


async def run(settings: RouterSettings) -> None:
    telemetry.setup_tracing("router")
    metrics_port = telemetry.start_metrics_server(settings.host, settings.metrics_port)
    tls = MutualTls.of(settings)
    workers = Watcher(registry.Registry(registry.connect(settings.redis_url, tls=tls)), settings.refresh_ms / 1000)
    await workers.start()
    config = settings.routing()
    router, stop_background = await assemble(config, settings.redis_url, tls, workers)
    servicer = RouterServicer(router, config.to_proto())
    draining = Draining()
    served = await grpc_server.serve(
        "router",
        settings.host,
        settings.port,
        lambda s: router_pb2_grpc.add_RouterServicer_to_server(servicer, s),
        tls=tls,
        interceptors=[*auth.interceptors(settings, registry.connect(settings.redis_url, tls=tls)), draining],
    )
    print(f"router ready on {settings.host}:{served.port} (metrics on :{metrics_port}/metrics)", flush=True)
    announcement = Announcement.of(settings, "router", metrics_port).start()
    await grpc_server.wait_for_signal()
    await announcement.stop()
    # The accounting stops last: the Routes answered while draining count their load.
    await grpc_server.drain(served, grace_s=settings.drain_timeout_s, before_stop=draining.begin)
    await stop_background()
    await workers.stop()


def main() -> None:
    uvloop.run(run(load(RouterSettings)))
