"""kvindex's Prometheus metrics: what it refused of the workers' KV-event streams."""

from __future__ import annotations

from prometheus_client import Counter

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
