import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from kvmesh.metrics_text import Histogram as Buckets
from kvmesh.metrics_text import Scrape, increase


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.25, 0.1),  # the rank at the top of the first bucket
        (0.5, 0.15),  # rank 20: halfway through the (0.1, 0.2] bucket's 20
        (0.125, 0.05),  # inside the first bucket, from 0
        (0.99, 0.2),  # in +Inf: the highest finite bound, as Prometheus answers
    ],
)
def test_quantile_interpolates_within_the_bucket(q, expected):
    h = Buckets({0.1: 10, 0.2: 30, math.inf: 40}, total=6.0, count=40)
    assert h.quantile(q) == pytest.approx(expected)


def test_an_empty_histogram_has_no_quantile():
    assert math.isnan(Buckets({0.1: 0, math.inf: 0}, 0.0, 0.0).quantile(0.5))


def test_minus_keeps_the_interval_only():
    before = Buckets({0.1: 10, math.inf: 10}, 0.5, 10)
    now = Buckets({0.1: 12, math.inf: 20}, 3.0, 20)
    interval = now.minus(before)
    assert interval.buckets == {0.1: 2, math.inf: 10} and interval.count == 10 and interval.mean == 0.25
    assert interval.quantile(0.5) == 0.1  # rank 5 of 10 is past the 2 under 0.1: in +Inf


def test_minus_after_a_restart_takes_everything_since():
    before = Buckets({0.1: 10, math.inf: 10}, 0.5, 10)
    now = Buckets({0.1: 3, math.inf: 4}, 0.4, 4)
    assert now.minus(before) is now


def test_increase_reads_a_reset_as_prometheus_does():
    assert increase(15.0, 10.0) == 5.0
    assert increase(3.0, 10.0) == 3.0
    assert increase(None, 10.0) is None and increase(3.0, None) is None


def exposition() -> str:
    registry = CollectorRegistry()
    requests = Counter("app_requests", "", ["front", "status"], registry=registry)
    requests.labels("http", "200").inc(3)
    requests.labels("grpc", "200").inc(2)
    requests.labels("http", "429").inc()
    Gauge("app_usage_ratio", "", registry=registry).set(0.25)
    latency = Histogram("app_seconds", "", ["priority"], buckets=(0.1, 1), registry=registry)
    latency.labels("0").observe(0.05)
    latency.labels("1").observe(0.5)
    latency.labels("1").observe(5)
    return generate_latest(registry).decode()


def test_a_scrape_sums_counters_and_gauges():
    scrape = Scrape.parse(exposition())
    assert scrape.total("app_requests") == 6
    assert scrape.by_label("app_requests", "status") == {"200": 5, "429": 1}
    assert scrape.total("app_usage_ratio") == 0.25
    assert scrape.total("absent") is None and scrape.by_label("absent", "status") == {}


def test_a_counter_exposed_without_total_is_read_too():
    # Triton's custom metrics (pb_utils.MetricFamily) as prometheus-cpp writes them.
    text = '# TYPE kvmesh_engine_prompt_tokens counter\nkvmesh_engine_prompt_tokens{model="m"} 12\n'
    assert Scrape.parse(text).total("kvmesh_engine_prompt_tokens") == 12


def test_a_histogram_is_merged_over_its_label_sets():
    h = Scrape.parse(exposition()).histogram("app_seconds")
    assert h is not None
    assert h.buckets == {0.1: 1, 1.0: 2, math.inf: 3} and h.count == 3 and h.total == pytest.approx(5.55)
    assert Scrape.parse(exposition()).histogram("absent") is None
