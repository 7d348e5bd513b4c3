"""settings → dependencies → serve; on SIGTERM or SIGINT, drain (draining.py): new calls refused,
health NOT_SERVING, the Routes in flight answered (up to --drain-timeout-s), then exit."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import uvloop

from kvmesh import auth, block_index, grpc_server, redis_functions, registry, telemetry
from kvmesh.announce import Announcement
from kvmesh.redis_batch import Coalescer
from kvmesh.registry import Watcher
from kvmesh.settings import load
from kvmesh.tls import MutualTls
from kvmesh.v1 import router_pb2_grpc
from services.router import shared_load
from services.router.accounting import Accounting
from services.router.candidates import CandidateSource
from services.router.config import RouterSettings
from services.router.draining import Draining
from services.router.framework.plugins import build
from services.router.inflight import InFlight
from services.router.redis_health import RedisHealth
from services.router.servicer import RouterServicer


async def assemble(settings: RouterSettings) -> tuple[RouterServicer, Callable[[], Awaitable[None]]]:
    """The servicer with its background work started, and what stops that work."""
    tls = MutualTls.of(settings)
    workers = Watcher(registry.Registry(registry.connect(settings.redis_url, tls=tls)), settings.refresh_ms / 1000)
    await workers.start()
    profiles = {name: build(name, spec) for name, spec in settings.policies.items()}
    client = registry.connect(settings.redis_url, timeout_s=1.0, tls=tls)
    try:
        await redis_functions.load(client, [block_index.LIBRARY, shared_load.LIBRARY])
    except Exception as e:  # noqa: BLE001 - they load on first use once Redis is back
        print(f"router: Redis functions not loaded yet: {e}", flush=True)
    # Batched calls over connections of their own (kvmesh/redis_batch.py): decisions' reads on one,
    # so that a read never waits behind the load updates on the other.
    reads = Coalescer(client, [block_index.LIBRARY])
    writes = Coalescer(client, [shared_load.LIBRARY])
    shared = shared_load.SharedLoad(writes, settings.request_lease_s)
    accounting = Accounting(InFlight(settings.request_lease_s), shared, RedisHealth())
    accounting.start()
    servicer = RouterServicer(
        CandidateSource(workers, reads, accounting),
        accounting,
        profiles,
        settings.policy,
        settings.disagg_threshold_tokens,
    )

    async def stop_background() -> None:
        await accounting.stop()
        reads.wire.close()
        writes.wire.close()
        await workers.stop()

    return servicer, stop_background


async def run(settings: RouterSettings) -> None:
    telemetry.setup_tracing("router")
    metrics_port = telemetry.start_metrics_server(settings.host, settings.metrics_port)
    servicer, stop_background = await assemble(settings)
    tls = MutualTls.of(settings)
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


def main() -> None:
    uvloop.run(run(load(RouterSettings)))
