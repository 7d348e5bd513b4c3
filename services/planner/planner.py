"""One planning interval: observe → forecast → need per pool → stabilise → fit the budget → act.
Every decision is logged with its inputs and reasons. With no metrics or no registry it holds its
last decision and says it is degraded."""

from __future__ import annotations

import copy
import logging
import time
from collections import deque
from dataclasses import dataclass, field, replace

from kvmesh.profile import EngineProfile
from services.planner import metrics
from services.planner.connectors import Connector
from services.planner.forecast import Forecaster
from services.planner.observe import MetricsUnavailable, Observation
from services.planner.replicas import Need, Targets, Traffic, decode_need, prefill_need
from services.planner.stabilizer import Stabilizer, fit_budget

log = logging.getLogger(__name__)
POOLS = ("prefill", "decode")
# A correction beyond these says the profile is for another machine, not that the load changed.
CORRECTION_BOUNDS = (0.5, 4.0)
HISTORY = 288
NEEDS = {"prefill": prefill_need, "decode": decode_need}


@dataclass(frozen=True)
class PoolDecision:
    pool: str
    current: int
    desired: int
    reason: str


@dataclass
class ScalingDecision:
    at_unix_ms: int
    pools: list[PoolDecision]
    degraded: bool
    inputs: dict = field(default_factory=dict)


class Planner:
    def __init__(self, metrics, profile: EngineProfile, targets: Targets, forecaster: Forecaster, connector: Connector,
                 stabilizer: Stabilizer, dry_run: bool = False):  # fmt: skip
        self.metrics = metrics
        self.profile = profile
        self.targets = targets
        self.forecaster = forecaster
        self.connector = connector
        self.stabilizers = {pool: copy.deepcopy(stabilizer) for pool in POOLS}
        self.dry_run = dry_run
        self.history: dict[str, deque[float]] = {k: deque(maxlen=HISTORY) for k in Traffic.__dataclass_fields__}
        self.correction = {"prefill": 1.0, "decode": 1.0}
        self.corrections: dict[str, deque[float]] = {pool: deque(maxlen=HISTORY) for pool in POOLS}  # per interval
        self.last: ScalingDecision | None = None

    def set_targets(self, targets: Targets) -> None:
        self.targets = targets

    def step(self, now_s: float | None = None) -> ScalingDecision:
        now_s = time.monotonic() if now_s is None else now_s
        decision = self._decide(now_s, self.stabilizers, record=True)
        if not decision.degraded and not self.dry_run and any(p.desired != p.current for p in decision.pools):
            desired = {p.pool: p.desired for p in decision.pools}
            done = self.connector.resize(desired, {p.pool: p.current for p in decision.pools})
            for pool in decision.pools:
                if pool.pool in done:
                    log.info("%s: %d → %d: %s", pool.pool, pool.current, pool.desired, done[pool.pool])
                    metrics.record_resize(pool.pool, pool.current, pool.desired)
        metrics.record_decision(decision)
        self.last = decision
        return decision

    def plan(self) -> ScalingDecision:
        """What step() would decide now, changing nothing (state is copied)."""
        planner = copy.copy(self)
        planner.history = {k: deque(v, maxlen=HISTORY) for k, v in self.history.items()}
        planner.correction = dict(self.correction)
        planner.corrections = {pool: deque(v, maxlen=HISTORY) for pool, v in self.corrections.items()}
        return planner._decide(time.monotonic(), copy.deepcopy(self.stabilizers), record=False)

    def _decide(self, now_s: float, stabilizers: dict[str, Stabilizer], record: bool) -> ScalingDecision:
        at = int(time.time() * 1000)
        try:
            observed = self.metrics.observe() if record else None
            current = self.connector.current()
        except (MetricsUnavailable, ConnectionError, OSError) as e:
            return self._hold(at, f"degraded, holding the last decision: {e}")
        if observed is not None:
            self._learn(observed, current)
        if not self.history["requests_per_s"]:
            return self._hold(at, "no observation yet")
        needs, last_needs = {}, {}
        for pool in POOLS:
            needs[pool], last_needs[pool] = self._forecast_need(pool)
        wanted, reasons = {}, {}
        for pool in POOLS:
            wanted[pool], rule = stabilizers[pool].decide(current[pool], needs[pool].replicas, now_s)
            reasons[pool] = f"{needs[pool].reason}; {rule}"
        prefill, decode, squeezed = fit_budget(
            wanted["prefill"], wanted["decode"], self.targets.max_replicas, (current["prefill"], current["decode"])
        )
        for pool in POOLS if squeezed else ():
            reasons[pool] += f"; budget: {squeezed}"
        pools = [PoolDecision(p, current[p], n, reasons[p]) for p, n in (("prefill", prefill), ("decode", decode))]
        last = {k: v[-1] for k, v in self.history.items()}
        inputs = {"load": last, "needs": {p: needs[p].replicas for p in POOLS}, "last_needs": last_needs,
                  "correction": self.correction}  # fmt: skip
        decision = ScalingDecision(at, pools, degraded=False, inputs=inputs)
        log.info("decision: %s", "; ".join(f"{p.pool} {p.current}→{p.desired} ({p.reason})" for p in pools))
        return decision

    def _forecast_need(self, pool: str) -> tuple[Need, float]:
        """The forecast (and the last interval's need beside it) of the pool's need, not the need of
        forecast inputs: each past interval's load, with the correction of its time, gives a need,
        and the forecaster extends that series. Forecasting rate, prompt and output lengths apart
        and multiplying would take maxima that never occur together (a peak rate × the longest
        prompts × the longest outputs); applying today's correction to every past interval would
        let a burst's need vanish with the latency it caused."""
        need, corrections = NEEDS[pool], self.corrections[pool]
        traffic = (Traffic(**dict(zip(self.history, v, strict=True))) for v in zip(*self.history.values(), strict=True))
        past = [need(t, self.profile, self.targets, c) for t, c in zip(traffic, corrections, strict=True)]
        replicas = self.forecaster.predict([n.replicas for n in past])
        reason = f"forecast need {replicas:.2f} over {len(past)} intervals; the last: {past[-1].reason}"
        return Need(replicas, reason), past[-1].replicas

    def _learn(self, o: Observation, current: dict[str, int]) -> None:
        metrics.record_attainment(
            o.ttft.share_within(self.targets.ttft_ms / 1000) if o.ttft else None,
            o.itl.share_within(self.targets.itl_ms / 1000) if o.itl else None,
            self.targets.percentile,
        )
        for key in self.history:
            self.history[key].append(getattr(o, key))
        if o.ttft_p_ms and o.isl_p:
            predicted = self.profile.ttft_ms(o.isl_p)
            self.correction["prefill"] = _bounded(o.ttft_p_ms / predicted)
        if o.itl_p_ms and o.isl_p:
            decode_workers = max(current["decode"], 1)  # read once per step: a connector call is I/O
            batch = max(o.in_flight / decode_workers, 1.0)
            predicted = self.profile.itl_ms(batch, o.isl_p + o.osl_p / 2)
            self.correction["decode"] = _bounded(o.itl_p_ms / predicted)
        for pool in POOLS:
            self.corrections[pool].append(self.correction[pool])

    def _hold(self, at: int, why: str) -> ScalingDecision:
        log.warning("planner %s", why)
        if self.last is None:
            return ScalingDecision(at, [], degraded=True, inputs={"why": why})
        return replace(self.last, at_unix_ms=at, degraded=True, inputs={"why": why})


def _bounded(ratio: float) -> float:
    low, high = CORRECTION_BOUNDS
    return min(max(ratio, low), high)
