"""The planning loop with a fake connector and metrics source: it scales on load, holds its last
decision (degraded) when metrics or the registry are missing, never acts in dry-run mode, and
Plan changes nothing. The metrics reader on a real Prometheus endpoint."""

import shlex

import pytest
from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server

from kvmesh.net import free_ports
from services.planner import forecast
from services.planner.connectors import PoolByPool
from services.planner.observe import GatewayMetrics, MetricsUnavailable, Observation
from services.planner.planner import Planner
from services.planner.replicas import Targets, Traffic, decode_need, prefill_need
from services.planner.stabilizer import Stabilizer
from tests.unit.services.planner.test_math import PROFILE


class FakeConnector(PoolByPool):
    name = "fake"

    def __init__(self):
        self.pools = {"prefill": 1, "decode": 1}
        self.calls = []
        self.registry_down = False

    def current(self):
        if self.registry_down:
            raise ConnectionError("registry unreachable")
        return dict(self.pools)

    def scale(self, pool, replicas):
        self.calls.append((pool, replicas))
        self.pools[pool] = replicas
        return "done"


class FakeMetrics:
    def __init__(self):
        self.next: Observation | Exception = MetricsUnavailable("not yet")

    def observe(self):
        if isinstance(self.next, Exception):
            raise self.next
        return self.next


def load(rps: float) -> Observation:
    return Observation(10, rps, isl_mean=1000, isl_p=2000, osl_mean=100, osl_p=200, ttft_p_ms=None, itl_p_ms=None,
                       in_flight=0)  # fmt: skip


def planner(dry_run=False):
    connector, metrics = FakeConnector(), FakeMetrics()
    p = Planner(metrics, PROFILE, Targets(ttft_ms=400, itl_ms=20, max_replicas=8), forecast.make("constant"),
                connector, Stabilizer(down_after=2, cooldown_s=0), dry_run=dry_run)  # fmt: skip
    return p, connector, metrics


def test_scales_both_pools_to_the_load_and_explains_why():
    p, connector, metrics = planner()
    metrics.next = load(10)  # hand-computed in test_planner_math: prefill 1.5, decode 3.74
    decision = p.step(now_s=0)
    assert not decision.degraded
    assert connector.calls == [("prefill", 2), ("decode", 4)]
    assert "batch 5" in decision.pools[1].reason and "scale up" in decision.pools[1].reason


def test_missing_metrics_hold_the_last_decision_and_report_degraded():
    p, connector, metrics = planner()
    assert p.step(now_s=0).degraded  # nothing observed yet
    metrics.next = load(10)
    p.step(now_s=10)
    metrics.next = MetricsUnavailable("no gateway metrics")
    held = p.step(now_s=20)
    assert held.degraded and "no gateway metrics" in held.inputs["why"]
    assert [d.desired for d in held.pools] == [2, 4] and len(connector.calls) == 2


def test_registry_loss_holds_too():
    p, connector, metrics = planner()
    metrics.next = load(10)
    p.step(now_s=0)
    connector.registry_down = True
    metrics.next = load(0.1)
    assert p.step(now_s=10).degraded and len(connector.calls) == 2


def test_dry_run_decides_but_never_acts_and_plan_changes_nothing():
    p, connector, metrics = planner(dry_run=True)
    metrics.next = load(10)
    assert [d.desired for d in p.step(now_s=0).pools] == [2, 4] and connector.calls == []
    history = {k: list(v) for k, v in p.history.items()}
    assert [d.desired for d in p.plan().pools] == [2, 4]
    assert {k: list(v) for k, v in p.history.items()} == history


def test_observed_latency_corrects_the_profile():
    p, connector, metrics = planner()
    slow = load(10)
    metrics.next = Observation(**{**slow.__dict__, "ttft_p_ms": 400.0})  # profile says 200 ms at ISL 2000
    decision = p.step(now_s=0)
    assert p.correction["prefill"] == 2.0
    assert "cannot be met" in decision.pools[0].reason


@pytest.fixture
def gateway_metrics():
    registry = CollectorRegistry()
    lengths = (128, 1024, 4096)
    port = free_ports(1)[0]
    start_http_server(port, addr="127.0.0.1", registry=registry)
    series = {
        "isl": Histogram("kvmesh_gateway_prompt_length_tokens", "", buckets=lengths, registry=registry),
        "osl": Histogram("kvmesh_gateway_output_length_tokens", "", buckets=lengths, registry=registry),
        "ttft": Histogram("kvmesh_gateway_ttft_seconds", "", buckets=(0.1, 0.5, 1.0), registry=registry),
        "in_flight": Gauge("kvmesh_gateway_in_flight", "", registry=registry),
    }
    return f"http://127.0.0.1:{port}/metrics", series


def test_metrics_are_differenced_between_scrapes(gateway_metrics):
    url, series = gateway_metrics
    source = GatewayMetrics([url], percentile=50)
    for _ in range(5):
        series["isl"].observe(5000)  # before the first scrape: not in any interval
    with pytest.raises(MetricsUnavailable, match="first scrape"):
        source.observe()
    for n in (200, 400, 600, 800):
        series["isl"].observe(n)
        series["osl"].observe(100)
    series["ttft"].observe(0.3)
    series["in_flight"].set(3)
    o = source.observe()
    assert o.isl_mean == 500 and 128 < o.isl_p <= 1024 and o.osl_mean == 100
    assert o.requests_per_s > 0 and o.in_flight == 3
    assert 100 < o.ttft_p_ms <= 500 and o.itl_p_ms is None


def test_no_gateway_answering_is_unavailable():
    with pytest.raises(MetricsUnavailable, match="no gateway metrics"):
        GatewayMetrics([f"http://127.0.0.1:{free_ports(1)[0]}/metrics"], 90).observe()


def test_worker_arguments_with_json_inside_survive_the_settings():
    from kvmesh.settings import load
    from services.planner.config import PlannerSettings

    engine_args = '{"timing": {"base_ms": 12.0, "speedup": 5}}'
    worker_args = shlex.join(["--model", "m", "--engine-args", engine_args])
    settings = load(PlannerSettings, ["--profile", "p.json", "--gateway-metrics", '["http://x/metrics"]',
                                      "--worker-args", worker_args])  # fmt: skip
    assert shlex.split(settings.worker_args) == ["--model", "m", "--engine-args", engine_args]


def test_pool_by_pool_connectors_shrink_a_pool_before_growing_the_other():
    connector = FakeConnector()
    connector.pools = {"prefill": 1, "decode": 3}
    connector.resize({"prefill": 3, "decode": 1}, dict(connector.pools))
    assert connector.calls == [("decode", 1), ("prefill", 3)]


def test_the_request_rate_counts_arrivals_not_only_the_requests_that_finished(gateway_metrics):
    url, series = gateway_metrics
    source = GatewayMetrics([url], percentile=50)
    with pytest.raises(MetricsUnavailable):
        source.observe()
    for _ in range(6):  # an overloaded interval: six arrive, two finish
        series["isl"].observe(1000)
    for _ in range(2):
        series["osl"].observe(50)
    o = source.observe()
    assert o.requests_per_s * o.interval_s == pytest.approx(6)


def test_a_peak_forecast_takes_the_busiest_intervals_need_not_the_product_of_each_inputs_peak():
    connector, metrics = FakeConnector(), FakeMetrics()
    targets = Targets(ttft_ms=400, itl_ms=20, max_replicas=64)
    p = Planner(metrics, PROFILE, targets, forecast.make("peak", window=10), connector, Stabilizer(), dry_run=True)
    many_short = Observation(10, 100, isl_mean=100, isl_p=100, osl_mean=10, osl_p=10, ttft_p_ms=None, itl_p_ms=None,
                             in_flight=0)  # fmt: skip
    few_long = Observation(10, 1, isl_mean=1000, isl_p=2000, osl_mean=100, osl_p=200, ttft_p_ms=None, itl_p_ms=None,
                           in_flight=0)  # fmt: skip
    for observation in (many_short, few_long):
        metrics.next = observation
        decision = p.step(now_s=0)

    def load(o: Observation) -> Traffic:
        return Traffic(o.requests_per_s, o.isl_mean, o.isl_p, o.osl_mean, o.osl_p)

    for pool, need in (("prefill", prefill_need), ("decode", decode_need)):
        busiest = max(need(load(o), PROFILE, targets).replicas for o in (many_short, few_long))
        both_peaks = need(Traffic(100, 1000, 2000, 100, 200), PROFILE, targets).replicas
        assert decision.inputs["needs"][pool] == pytest.approx(busiest)
        assert busiest < both_peaks / 2


def test_a_bursts_need_is_remembered_with_the_correction_of_its_time():
    connector, metrics = FakeConnector(), FakeMetrics()
    targets = Targets(ttft_ms=400, itl_ms=20, max_replicas=64)
    p = Planner(metrics, PROFILE, targets, forecast.make("peak", window=10), connector, Stabilizer(), dry_run=True)
    burst = Observation(10, 10, isl_mean=1000, isl_p=2000, osl_mean=100, osl_p=200, ttft_p_ms=1e6, itl_p_ms=None,
                        in_flight=0)  # fmt: skip
    calm = Observation(10, 0.1, isl_mean=1000, isl_p=2000, osl_mean=100, osl_p=200, ttft_p_ms=1.0, itl_p_ms=None,
                       in_flight=0)  # fmt: skip
    for observation in (burst, calm):
        metrics.next = observation
        decision = p.step(now_s=0)
    assert p.correction["prefill"] == 0.5  # the calm interval's latency: the profile flatters nothing now
    at_the_time = prefill_need(Traffic(10, 1000, 2000, 100, 200), PROFILE, targets, correction=4.0).replicas
    assert decision.inputs["needs"]["prefill"] == pytest.approx(at_the_time)
