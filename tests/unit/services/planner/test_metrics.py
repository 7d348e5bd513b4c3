"""The planner's metrics: need, forecast, replicas and actions per pool after a step, SLA attainment
from the interval's histograms, and the share within a threshold as histogram_quantile's inverse."""

from __future__ import annotations

import math

import pytest
from prometheus_client import REGISTRY

from kvmesh.metrics_text import Histogram
from services.planner.observe import MetricsUnavailable, Observation
from tests.unit.services.planner.test_loop import load, planner


def value(name, **labels):
    return REGISTRY.get_sample_value(name, labels)


def test_a_step_exports_need_forecast_replicas_and_the_resizes_it_made():
    p, _, metrics = planner()
    ups_before = value("kvmesh_planner_actions_total", pool="decode", direction="up") or 0
    metrics.next = load(40)
    decision = p.step(0)
    assert value("kvmesh_planner_degraded") == 0
    for pool in decision.pools:
        assert value("kvmesh_planner_replicas", pool=pool.pool) == pool.current
        assert value("kvmesh_planner_desired_replicas", pool=pool.pool) == pool.desired
        assert value("kvmesh_planner_forecast_replicas", pool=pool.pool) == decision.inputs["needs"][pool.pool]
        assert value("kvmesh_planner_need_replicas", pool=pool.pool) > 0
    grew = [pool for pool in decision.pools if pool.desired > pool.current]
    assert grew and value("kvmesh_planner_actions_total", pool="decode", direction="up") == ups_before + 1
    metrics.next = MetricsUnavailable("no gateway")  # a degraded step
    p.step(10)
    assert value("kvmesh_planner_degraded") == 1


def test_sla_attainment_is_the_share_within_the_targets():
    p, _, metrics = planner()  # targets: TTFT 400 ms, ITL 20 ms, p90
    ttft = Histogram({0.25: 6.0, 0.5: 8.0, math.inf: 10.0}, 3.0, 10.0)  # 400 ms: 6 + 2 × 0.6 of 10
    itl = Histogram({0.01: 90.0, 0.02: 99.0, math.inf: 100.0}, 1.0, 100.0)
    metrics.next = Observation(**{**load(5).__dict__, "ttft": ttft, "itl": itl})
    p.step(0)
    assert value("kvmesh_planner_sla_attainment", target="ttft") == pytest.approx(0.72)
    assert value("kvmesh_planner_sla_attainment", target="itl") == pytest.approx(0.99)
    assert value("kvmesh_planner_sla_goal") == pytest.approx(0.9)


@pytest.mark.parametrize("threshold", [0.05, 0.2, 0.3, 0.9, 3.0])
def test_share_within_inverts_the_quantile(threshold):
    h = Histogram({0.1: 10.0, 0.5: 40.0, 1.0: 70.0, 2.0: 90.0, math.inf: 100.0}, 50.0, 100.0)
    if threshold < 2.0:
        assert h.quantile(h.share_within(threshold)) == pytest.approx(threshold)
    assert h.share_within(3.0) == 0.9 and math.isnan(Histogram({}, 0, 0).share_within(1.0))
