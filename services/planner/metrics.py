"""The planner's Prometheus metrics: per pool what the load needs, the forecast it plans on and the
replicas it has and wants; the resizes it made; and how many of the last interval's requests met
the targets (SLA attainment), against the share the targets' percentile asks for."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

NEED = Gauge("kvmesh_planner_need_replicas", "Workers the last interval's load needed, fractional", ["pool"])
FORECAST = Gauge("kvmesh_planner_forecast_replicas", "Workers the forecast needs, fractional", ["pool"])
REPLICAS = Gauge("kvmesh_planner_replicas", "Workers in the pool", ["pool"])
DESIRED = Gauge("kvmesh_planner_desired_replicas", "Workers the last decision wants in the pool", ["pool"])
ACTIONS = Counter("kvmesh_planner_actions", "Pool resizes made, by direction (up, down)", ["pool", "direction"])
SLA_ATTAINMENT = Gauge(
    "kvmesh_planner_sla_attainment",
    "Share of the last interval's requests (ttft) or token gaps (itl) within the target",
    ["target"],
)
SLA_GOAL = Gauge("kvmesh_planner_sla_goal", "The share within the targets that their percentile asks for")
DEGRADED = Gauge("kvmesh_planner_degraded", "1 while the planner holds its last decision")
# Every series from the start: a planner that never resized shows 0 resizes, not no data.
for _pool in ("prefill", "decode"):
    for _direction in ("up", "down"):
        ACTIONS.labels(_pool, _direction)


def record_decision(decision) -> None:
    """A ScalingDecision of a planning step (a degraded one changes only DEGRADED)."""
    DEGRADED.set(1 if decision.degraded else 0)
    if decision.degraded:
        return
    for pool in decision.pools:
        REPLICAS.labels(pool.pool).set(pool.current)
        DESIRED.labels(pool.pool).set(pool.desired)
    for pool, replicas in decision.inputs["needs"].items():
        FORECAST.labels(pool).set(replicas)
    for pool, replicas in decision.inputs["last_needs"].items():
        NEED.labels(pool).set(replicas)


def record_resize(pool: str, current: int, desired: int) -> None:
    ACTIONS.labels(pool, "up" if desired > current else "down").inc()


def record_attainment(ttft_share: float | None, itl_share: float | None, percentile: float) -> None:
    """None: nothing of that kind in the interval; the last value stays."""
    SLA_GOAL.set(percentile / 100.0)
    for target, share in (("ttft", ttft_share), ("itl", itl_share)):
        if share is not None:
            SLA_ATTAINMENT.labels(target).set(share)
