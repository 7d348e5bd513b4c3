"""Engine metrics: counts taken and zeroed by each sample, published to Triton's custom-metrics API
(a fake pb_utils recording each call), and the export loop that survives a failed publish."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future

from engines import metrics


class FakeMetric:
    def __init__(self, family, labels, buckets):
        self.family, self.labels, self.buckets, self.calls = family, labels, buckets, []

    def set(self, value):
        self.calls.append(("set", value))

    def increment(self, value):
        self.calls.append(("increment", value))

    def observe(self, value):
        self.calls.append(("observe", value))


class FakeFamily:
    COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
    made: dict[str, FakeMetric] = {}

    def __init__(self, name, description, kind):
        self.name, self.kind = name, kind

    def Metric(self, labels, buckets=None):  # noqa: N802 - pb_utils' spelling
        metric = FakeFamily.made[self.name] = FakeMetric(self, labels, buckets)
        return metric


class FakePbUtils:
    MetricFamily = FakeFamily


def test_each_sample_takes_what_was_counted_since_the_last():
    counters = metrics.EngineCounters()
    counters.prefix_lookup(100, 64)
    counters.prefix_lookup(50, 0)
    counters.kv_transfer(0.004, 4096)
    first = counters.take(0.25, 3, 1)
    assert (first.prompt_tokens, first.prefix_cache_hit_tokens) == (150, 64)
    assert (first.kv_transfer_seconds, first.kv_transfer_bytes) == ([0.004], 4096)
    assert (first.kv_usage_ratio, first.running_sequences, first.waiting_sequences) == (0.25, 3, 1)
    second = counters.take(0.0, 0, 0)
    assert (second.prompt_tokens, second.kv_transfer_seconds, second.kv_transfer_bytes) == (0, [], 0)


def test_publish_sets_gauges_and_moves_only_the_counters_that_moved():
    FakeFamily.made.clear()
    triton = metrics.TritonMetrics(FakePbUtils, {"model": "sim", "version": "1"})
    made = FakeFamily.made
    assert {m.family.kind for m in made.values()} == {"gauge", "counter", "histogram"}
    assert all(m.labels == {"model": "sim", "version": "1"} for m in made.values())
    assert made["kvmesh_engine_kv_transfer_seconds"].buckets == list(metrics.KV_TRANSFER_BUCKETS)

    triton.publish(metrics.EngineSample(0.5, 2, 7, 300, 128, [0.01, 0.02], 1000))
    triton.publish(metrics.EngineSample(0.0, 0, 0))
    assert made["kvmesh_engine_kv_usage_ratio"].calls == [("set", 0.5), ("set", 0.0)]
    assert made["kvmesh_engine_waiting_sequences"].calls == [("set", 7), ("set", 0)]
    assert made["kvmesh_engine_prompt_tokens"].calls == [("increment", 300)]
    assert made["kvmesh_engine_prefix_cache_hit_tokens"].calls == [("increment", 128)]
    assert made["kvmesh_engine_kv_transfer_seconds"].calls == [("observe", 0.01), ("observe", 0.02)]
    assert made["kvmesh_engine_kv_transfer_bytes"].calls == [("increment", 1000)]
    triton.close()


def test_export_publishes_a_sample_each_interval_and_survives_a_failed_publish():
    published: list[metrics.EngineSample] = []

    def publish(sample):
        future: Future = Future()
        if not published:
            future.set_exception(RuntimeError("Triton said no"))
        else:
            future.set_result(None)
        published.append(sample)
        return future

    async def run():
        counters = metrics.EngineCounters()
        task = asyncio.ensure_future(metrics.export(lambda: counters.take(0.1, 1, 0), publish, interval_s=0.01))
        await asyncio.sleep(0.1)
        task.cancel()

    asyncio.run(run())
    assert len(published) >= 3
