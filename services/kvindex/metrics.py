"""kvindex's Prometheus metrics: what it took in from the workers' KV-event streams, how late, what
the index holds, and what it refused."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# An event is visible in Redis milliseconds after the engine made it; seconds mean kvindex is behind.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

EVENTS = Counter("kvmesh_kvindex_events", "Block events applied: each block stored or removed counts one", ["worker"])
INGESTION_LAG = Histogram(
    "kvmesh_kvindex_ingestion_lag_seconds",
    "From a live KV-event batch's time (the engine's clock) to its blocks visible in Redis",
    buckets=LAG_BUCKETS,
)
INDEX_BLOCKS = Gauge("kvmesh_kvindex_index_blocks", "Blocks the index holds for a worker", ["worker"])
DROPPED_MESSAGES = Counter(
    "kvmesh_kvindex_dropped_messages",
    "KV-event messages dropped whole: frames, seq_range, seq_jump, undecodable, oversize",
    ["reason"],
)
DROPPED_EVENTS = Counter(
    "kvmesh_kvindex_dropped_events",
    "Malformed BlockStored events dropped: block_size, block_hash, token_ids, worker_full",
    ["reason"],
)


def forget_worker(worker_id: str) -> None:
    """A worker that left: its series go with it."""
    for metric in (EVENTS, INDEX_BLOCKS):
        try:
            metric.remove(worker_id)
        except KeyError:  # it never published
            pass
