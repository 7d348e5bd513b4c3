"""vLLM's scheduler statistics as kvmesh's engine metrics (engines/metrics.py), through a custom
stat logger: AsyncLLM calls it on the engine's loop with each step's SchedulerStats.

vLLM counts prefix-cache queries and hits in tokens, as kvmesh's metrics do; on a decode instance
with NixlConnector, its kv_connector_stats carry each finished KV pull's duration and bytes.
SchedulerStats is not a stable vLLM interface: every field is read with a default.
"""

from __future__ import annotations

from typing import Any

from engines.metrics import EngineCounters, EngineSample


class VllmStats:
    """The last gauges vLLM reported and the counts since the last sample."""

    def __init__(self) -> None:
        self.counters = EngineCounters()
        self._usage, self._running, self._waiting = 0.0, 0, 0

    def record(self, scheduler_stats: Any) -> None:
        if scheduler_stats is None:  # an output batch without a scheduler step behind it
            return
        self._usage = float(getattr(scheduler_stats, "kv_cache_usage", 0.0))
        self._running = int(getattr(scheduler_stats, "num_running_reqs", 0))
        self._waiting = int(getattr(scheduler_stats, "num_waiting_reqs", 0)) + int(
            getattr(scheduler_stats, "num_skipped_waiting_reqs", 0)
        )
        prefix = getattr(scheduler_stats, "prefix_cache_stats", None)
        if prefix is not None and prefix.queries:
            self.counters.prefix_lookup(prefix.queries, prefix.hits)
        transfers = getattr(scheduler_stats, "kv_connector_stats", None) or {}
        durations, sizes = transfers.get("transfer_duration", ()), transfers.get("bytes_transferred", ())
        for seconds, nbytes in zip(durations, sizes, strict=True):  # one entry per transfer in each
            self.counters.kv_transfer(float(seconds), int(nbytes))

    def sample(self) -> EngineSample:
        return self.counters.take(self._usage, self._running, self._waiting)


def stat_logger(stats: VllmStats) -> type:
    """A StatLoggerBase class (vLLM calls it with (vllm_config, engine_index)) feeding `stats`."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class KvmeshStatLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0):
            self.engine_index = engine_index

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
            stats.record(scheduler_stats)

        def log_engine_initialized(self) -> None:
            return None

    return KvmeshStatLogger
