"""Routing checked against the engines: each Route predicts how many prompt tokens the worker
that computes the prompt finds cached (its KV overlap); the request's Release brings what the
engine reported, and the difference is exported and kept for Explain.

A misprediction is a difference of a KV block or more: `over` (the index claimed blocks the
engine no longer had: evicted, or its events not yet seen) or `under` (the engine had blocks the
index did not know: purged, or stored since the Route read it)."""

from __future__ import annotations

import time
from collections import deque
from typing import NamedTuple

from prometheus_client import Counter, Histogram

# Predicted − actual cached tokens. Mirrored around 0; the (−1, 0] bucket holds the exact hits.
_MAGNITUDES = (16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
ERROR_BUCKETS = (*(-m for m in reversed(_MAGNITUDES)), -1, 0, *_MAGNITUDES)
ERRORS = Histogram(
    "kvmesh_router_prediction_error_tokens",
    "Predicted minus engine-reported cached prompt tokens, per request released with them",
    ["worker"],
    buckets=ERROR_BUCKETS,
)
MISPREDICTIONS = Counter(
    "kvmesh_router_mispredictions",
    "Requests whose cached prompt tokens the router mispredicted by a KV block or more",
    ["worker", "kind"],
)
# Requests routed but never released here (released on another router, or the gateway vanished)
# would otherwise stay: past this many, the oldest prediction is dropped.
MAX_PENDING = 65536


# NamedTuples: built once a request each, and a frozen dataclass costs several times as much.
class Expected(NamedTuple):
    worker_id: str
    cached_tokens: int
    block_size: int


class Outcome(NamedTuple):
    request_id: str
    worker_id: str
    predicted: int
    actual: int
    misprediction: str  # "over", "under" or ""
    released_at: float  # time.monotonic()


def predicted_cached_tokens(overlap_blocks: int, num_tokens: int, block_size: int) -> int:
    """The overlap in tokens, at most the prompt's full blocks before its last token: an engine
    always computes the last prompt token, so a prompt held whole still computes its last block."""
    usable_blocks = max(num_tokens - 1, 0) // block_size
    return min(overlap_blocks, usable_blocks) * block_size


class Predictions:
    def __init__(self, keep: int = 32):
        self._pending: dict[str, Expected] = {}  # request id → its prediction, until released
        self.recent: deque[Outcome] = deque(maxlen=keep)
        self._errors: dict[str, Histogram] = {}  # worker id → its labelled histogram, found once

    def expect(self, request_id: str, worker_id: str, cached_tokens: int, block_size: int) -> None:
        self._pending.pop(request_id, None)  # a retried id's prediction goes to the end, as the newest
        self._pending[request_id] = Expected(worker_id, cached_tokens, block_size)
        if len(self._pending) > MAX_PENDING:
            del self._pending[next(iter(self._pending))]

    def settle(self, request_id: str, actual_cached_tokens: int | None) -> Outcome | None:
        """The request is released: with the engine's cached tokens, its prediction is checked;
        without (it failed, moved or was cancelled), forgotten."""
        expected = self._pending.pop(request_id, None)
        if expected is None or actual_cached_tokens is None:
            return None
        error = expected.cached_tokens - actual_cached_tokens
        kind = ""
        if abs(error) >= expected.block_size:
            kind = "over" if error > 0 else "under"
            MISPREDICTIONS.labels(expected.worker_id, kind).inc()
        errors = self._errors.get(expected.worker_id)
        if errors is None:
            errors = self._errors[expected.worker_id] = ERRORS.labels(expected.worker_id)
        errors.observe(error)
        outcome = Outcome(
            request_id, expected.worker_id, expected.cached_tokens, actual_cached_tokens, kind, time.monotonic()
        )
        self.recent.append(outcome)
        return outcome
