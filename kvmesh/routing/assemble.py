"""A Router from its config, its background work started (the batched Redis calls and the
shared-load writer); with what stops that work."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from kvmesh import block_index, redis_functions, registry
from kvmesh.redis_batch import Coalescer
from kvmesh.registry import Watcher
from kvmesh.routing import shared_load
from kvmesh.routing.accounting import Accounting
from kvmesh.routing.candidates import CandidateSource
from kvmesh.routing.config import RoutingConfig
from kvmesh.routing.framework.plugins import build
from kvmesh.routing.inflight import InFlight
from kvmesh.routing.redis_health import RedisHealth
from kvmesh.routing.router import Router
from kvmesh.tls import MutualTls


async def assemble(
    config: RoutingConfig, redis_url: str, tls: MutualTls | None, workers: Watcher
) -> tuple[Router, Callable[[], Awaitable[None]]]:
    """`workers`: the caller's running registry watcher (the caller stops it)."""
    profiles = {name: build(name, spec) for name, spec in config.policies.items()}
    client = registry.connect(redis_url, timeout_s=1.0, tls=tls)
    try:
        await redis_functions.load(client, [block_index.LIBRARY, shared_load.LIBRARY])
    except Exception as e:  # noqa: BLE001 - they load on first use once Redis is back
        print(f"routing: Redis functions not loaded yet: {e}", flush=True)
    # Batched calls over connections of their own (kvmesh/redis_batch.py): decisions' reads on one,
    # so that a read never waits behind the load updates on the other.
    reads = Coalescer(client, [block_index.LIBRARY])
    writes = Coalescer(client, [shared_load.LIBRARY])
    shared = shared_load.SharedLoad(writes, config.request_lease_s)
    accounting = Accounting(InFlight(config.request_lease_s), shared, RedisHealth())
    accounting.start()
    router = Router(
        CandidateSource(workers, reads, accounting),
        accounting,
        profiles,
        config.policy,
        config.disagg_threshold_tokens,
    )

    async def stop_background() -> None:
        await accounting.stop()
        reads.wire.close()
        writes.wire.close()

    return router, stop_background
