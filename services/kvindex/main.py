"""settings → dependencies → serve."""

from __future__ import annotations

import uvloop

from kvmesh import auth, grpc_server, registry, telemetry
from kvmesh.announce import Announcement
from kvmesh.block_index import BlockIndex
from kvmesh.registry import Watcher
from kvmesh.settings import load
from kvmesh.tls import MutualTls
from kvmesh.v1 import kvindex_pb2_grpc
from services.kvindex.config import KvIndexSettings
from services.kvindex.ingest import Ingestor
from services.kvindex.servicer import KvIndexServicer
from services.kvindex.subscription import Limits


async def run(settings: KvIndexSettings) -> None:
    telemetry.setup_tracing("kvindex")
    metrics_port = telemetry.start_metrics_server(settings.host, settings.metrics_port)
    tls = MutualTls.of(settings)
    workers = Watcher(registry.Registry(registry.connect(settings.redis_url, tls=tls)), settings.refresh_ms / 1000)
    await workers.start()
    index = BlockIndex(registry.connect(settings.redis_url, timeout_s=5.0, tls=tls))
    await index.load_functions()
    limits = Limits(
        max_block_size=settings.max_block_size,
        max_batch_blocks=settings.max_batch_blocks,
        max_message_bytes=settings.max_message_mb << 20,
        max_seq_gap=settings.max_seq_gap,
        max_worker_blocks=settings.max_worker_blocks,
    )
    ingestor = Ingestor(workers, index, settings.refresh_ms / 1000, limits)
    await ingestor.start()
    servicer = KvIndexServicer(index, ingestor, settings.max_match_blocks)
    served = await grpc_server.serve(
        "kvindex",
        settings.host,
        settings.port,
        lambda s: kvindex_pb2_grpc.add_KvIndexServicer_to_server(servicer, s),
        tls=tls,
        interceptors=auth.interceptors(settings, registry.connect(settings.redis_url, tls=tls)),
    )
    print(f"kvindex ready on {settings.host}:{served.port} (metrics on :{metrics_port}/metrics)", flush=True)
    announcement = Announcement.of(settings, "kvindex", metrics_port).start()
    await grpc_server.wait_for_signal()
    await announcement.stop()

    async def stop_background() -> None:
        await ingestor.stop()
        await workers.stop()

    await grpc_server.drain(served, grace_s=2.0, before_stop=stop_background)
    index.close()  # after the drain: a Match still answering uses it


def main() -> None:
    uvloop.run(run(load(KvIndexSettings)))
