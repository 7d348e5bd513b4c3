"""vLLM's SchedulerStats (stand-ins with its field names) as kvmesh's engine metrics."""

from __future__ import annotations

from types import SimpleNamespace

from engines.vllm_metrics import VllmStats


def scheduler_stats(queries=0, hits=0, connector=None, **gauges):
    return SimpleNamespace(prefix_cache_stats=SimpleNamespace(queries=queries, hits=hits),
                           kv_connector_stats=connector, **gauges)  # fmt: skip


def test_prefix_lookups_add_up_and_gauges_are_the_last_step_s():
    stats = VllmStats()
    stats.record(scheduler_stats(100, 64, kv_cache_usage=0.5, num_running_reqs=2, num_waiting_reqs=1))
    stats.record(None)  # an output batch without a step behind it
    stats.record(scheduler_stats(50, 0, kv_cache_usage=0.25, num_running_reqs=1, num_waiting_reqs=0,
                                 num_skipped_waiting_reqs=3))  # fmt: skip
    taken = stats.sample()
    assert (taken.prompt_tokens, taken.prefix_cache_hit_tokens) == (150, 64)
    assert (taken.kv_usage_ratio, taken.running_sequences, taken.waiting_sequences) == (0.25, 1, 3)
    assert stats.sample().prompt_tokens == 0


def test_nixl_transfers_become_kv_transfer_time_and_bytes():
    stats = VllmStats()
    nixl = {"transfer_duration": [0.003, 0.005], "bytes_transferred": [1000, 3000], "num_descriptors": [4, 4]}
    stats.record(scheduler_stats(connector=nixl))
    taken = stats.sample()
    assert taken.kv_transfer_seconds == [0.003, 0.005] and taken.kv_transfer_bytes == 4000
