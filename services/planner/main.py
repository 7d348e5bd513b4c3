"""settings → dependencies → serve; one planning step per interval."""

from __future__ import annotations

import asyncio
import logging

import uvloop

from kvmesh import auth, grpc_server, registry, telemetry
from kvmesh.announce import Announcement
from kvmesh.profile import EngineProfile
from kvmesh.registry import Watcher
from kvmesh.settings import load
from kvmesh.tls import MutualTls
from kvmesh.v1 import planner_pb2_grpc
from services.planner import forecast
from services.planner.config import PlannerSettings
from services.planner.connectors import factory as connectors
from services.planner.connectors.local import LocalConnector
from services.planner.observe import GatewayMetrics
from services.planner.planner import Planner
from services.planner.replicas import Targets
from services.planner.servicer import PlannerServicer
from services.planner.stabilizer import Stabilizer

log = logging.getLogger(__name__)


async def run(settings: PlannerSettings) -> None:
    telemetry.setup_tracing("planner")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per scrape otherwise
    metrics_port = telemetry.start_metrics_server(settings.host, settings.metrics_port)
    tls = MutualTls.of(settings)
    workers = Watcher(registry.Registry(registry.connect(settings.redis_url, tls=tls)), settings.refresh_ms / 1000)
    await workers.start()

    connector = connectors.make(settings, workers)
    targets = Targets(settings.ttft_ms, settings.itl_ms, settings.percentile, settings.max_replicas)
    forecaster = forecast.make(settings.forecaster, settings.forecast_window, settings.forecast_smooth)
    planner = Planner(
        GatewayMetrics(settings.gateway_metrics, settings.percentile, tls),
        EngineProfile.load(settings.profile),
        targets,
        forecaster,
        connector,
        Stabilizer(down_after=settings.down_after, cooldown_s=settings.cooldown_s),
        dry_run=settings.dry_run,
    )
    servicer = PlannerServicer(planner)
    served = await grpc_server.serve(
        "planner",
        settings.host,
        settings.port,
        lambda s: planner_pb2_grpc.add_PlannerServicer_to_server(servicer, s),
        tls=tls,
        interceptors=auth.interceptors(settings, registry.connect(settings.redis_url, tls=tls)),
    )
    print(f"planner ready on {settings.host}:{served.port} (metrics on :{metrics_port}/metrics)", flush=True)
    announcement = Announcement.of(settings, "planner", metrics_port).start()

    async def loop() -> None:
        while True:
            await asyncio.sleep(settings.interval_s)
            try:
                await asyncio.to_thread(planner.step)
            except Exception:  # one bad interval must not stop planning
                log.exception("planning step failed")

    stepping = asyncio.create_task(loop())
    await grpc_server.wait_for_signal()
    await announcement.stop()

    async def stop_background() -> None:
        stepping.cancel()
        await asyncio.gather(stepping, return_exceptions=True)
        if isinstance(connector, LocalConnector):  # the workers it started stop with it
            await asyncio.to_thread(connector.close)
        await workers.stop()

    await grpc_server.drain(served, grace_s=2.0, before_stop=stop_background)


def main() -> None:
    uvloop.run(run(load(PlannerSettings)))
