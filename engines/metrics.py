"""The engine's own metrics, on Triton's metrics port beside Triton's nv_* ones (Triton's custom-metrics
API, `pb_utils.MetricFamily`): KV-cache usage, running and waiting sequences, prefix-cache hit and
prompt tokens, and the KV a decode instance pulled from a prefill instance (time and bytes).

Each engine counts on its own loop (EngineCounters) and answers `metrics_sample()`; once a second
the model takes a sample there and publishes it on the Outbox thread, so the engine's loop never waits
on Triton's IPC and a request never pays a metrics call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

EXPORT_INTERVAL_S = 1.0
# A NIXL pull of one prompt's KV on a local link takes milliseconds (bench/kv_transfer), seconds when a
# prefill instance is slow to answer or the link is remote.
KV_TRANSFER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class EngineSample:
    """The engine now (gauges) and what it counted since the previous sample (counters)."""

    kv_usage_ratio: float
    running_sequences: int
    waiting_sequences: int
    prompt_tokens: int = 0
    prefix_cache_hit_tokens: int = 0
    kv_transfer_seconds: list[float] = field(default_factory=list)
    kv_transfer_bytes: int = 0


class EngineCounters:
    """What an engine adds to as it runs (on its loop), taken and zeroed by each sample."""

    def __init__(self) -> None:
        self._pending = EngineSample(0.0, 0, 0)

    def prefix_lookup(self, prompt_tokens: int, hit_tokens: int) -> None:
        """A request's prompt looked up in the prefix cache, `hit_tokens` of it found."""
        self._pending.prompt_tokens += prompt_tokens
        self._pending.prefix_cache_hit_tokens += hit_tokens

    def kv_transfer(self, seconds: float, nbytes: int) -> None:
        """A decode request's KV arrived from its prefill instance."""
        self._pending.kv_transfer_seconds.append(seconds)
        self._pending.kv_transfer_bytes += nbytes

    def take(self, kv_usage_ratio: float, running: int, waiting: int) -> EngineSample:
        taken, self._pending = self._pending, EngineSample(0.0, 0, 0)
        taken.kv_usage_ratio, taken.running_sequences, taken.waiting_sequences = kv_usage_ratio, running, waiting
        return taken


class TritonMetrics:
    """The kvmesh_engine_* families and this model instance's metrics in them. Counters carry no
    _total suffix: Triton's exposition writes names as given (as for its own nv_* counters)."""

    def __init__(self, pb_utils: Any, labels: dict[str, str]):
        family = pb_utils.MetricFamily
        self._families = [
            kv_usage := family("kvmesh_engine_kv_usage_ratio", "KV-cache blocks in use, 0-1", family.GAUGE),
            running := family("kvmesh_engine_running_sequences", "Sequences being computed", family.GAUGE),
            waiting := family("kvmesh_engine_waiting_sequences", "Sequences waiting to be scheduled", family.GAUGE),
            hits := family("kvmesh_engine_prefix_cache_hit_tokens", "Prompt tokens found in the prefix cache",
                           family.COUNTER),
            prompts := family("kvmesh_engine_prompt_tokens", "Prompt tokens looked up in the prefix cache",
                              family.COUNTER),
            seconds := family("kvmesh_engine_kv_transfer_seconds",
                              "Time a decode request's KV took to arrive from its prefill instance", family.HISTOGRAM),
            nbytes := family("kvmesh_engine_kv_transfer_bytes", "KV bytes pulled from prefill instances",
                             family.COUNTER),
        ]  # fmt: skip
        self._kv_usage = kv_usage.Metric(labels=labels)
        self._running = running.Metric(labels=labels)
        self._waiting = waiting.Metric(labels=labels)
        self._hits = hits.Metric(labels=labels)
        self._prompts = prompts.Metric(labels=labels)
        self._seconds = seconds.Metric(labels=labels, buckets=list(KV_TRANSFER_BUCKETS))
        self._bytes = nbytes.Metric(labels=labels)

    def publish(self, sample: EngineSample) -> None:
        """Each call is an IPC round trip to Triton: counters that did not move are skipped."""
        self._kv_usage.set(sample.kv_usage_ratio)
        self._running.set(sample.running_sequences)
        self._waiting.set(sample.waiting_sequences)
        if sample.prompt_tokens:
            self._prompts.increment(sample.prompt_tokens)
            self._hits.increment(sample.prefix_cache_hit_tokens)
        for seconds in sample.kv_transfer_seconds:
            self._seconds.observe(seconds)
        if sample.kv_transfer_bytes:
            self._bytes.increment(sample.kv_transfer_bytes)

    def close(self) -> None:
        """Triton wants every Metric gone before its MetricFamily."""
        for name in ("_kv_usage", "_running", "_waiting", "_hits", "_prompts", "_seconds", "_bytes"):
            delattr(self, name)
        self._families.clear()


async def export(
    sample: Callable[[], EngineSample],
    publish: Callable[[EngineSample], Future],
    interval_s: float = EXPORT_INTERVAL_S,
) -> None:
    """On the engine's loop until cancelled: a sample each interval, published off the loop."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await asyncio.wrap_future(publish(sample()))
        except Exception:  # a metric that failed never stops serving, nor the next samples
            log.exception("engine metrics: publishing failed")
