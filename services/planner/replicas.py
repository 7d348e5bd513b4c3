"""How many prefill and decode workers a forecast load needs to meet the targets, from a profile.

Prefill: the p-th percentile prompt must finish within the TTFT target on an idle worker; what is
left of the target is the queueing a worker may add, which bounds its utilisation (M/M/1 waiting
time rho/(1-rho)·S ≤ slack). Decode: the p-th percentile request, halfway through its output, sets
the context; the largest batch meeting the ITL target there sets a worker's tokens/s. Both scale
by a correction, observed over predicted latency, so that a profile that flatters the engine is
corrected by what the mesh measures.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmesh.profile import Profile

MIN_UTILISATION, MAX_UTILISATION = 0.05, 0.95


@dataclass(frozen=True)
class Load:
    requests_per_s: float
    isl_mean: float
    isl_p: float  # the targets' percentile
    osl_mean: float
    osl_p: float


@dataclass(frozen=True)
class Targets:
    ttft_ms: float
    itl_ms: float
    percentile: float = 90.0
    max_replicas: int = 8


@dataclass(frozen=True)
class Need:
    """Fractional workers (the stabiliser rounds, with hysteresis) and why."""

    replicas: float
    reason: str
    feasible: bool = True


def prefill_need(load: Load, profile: Profile, targets: Targets, correction: float = 1.0) -> Need:
    if load.requests_per_s <= 0:
        return Need(0.0, "no requests")
    alone_ms = profile.ttft_ms(load.isl_p) * correction
    service_ms = profile.ttft_ms(load.isl_mean) * correction
    slack_ms = targets.ttft_ms - alone_ms
    feasible = slack_ms > 0
    utilisation = MIN_UTILISATION if not feasible else slack_ms / (slack_ms + service_ms)
    utilisation = min(max(utilisation, MIN_UTILISATION), MAX_UTILISATION)
    demand = load.requests_per_s * load.isl_mean
    capacity = profile.prefill_tokens_per_s(load.isl_mean) / correction
    need = demand / (capacity * utilisation)
    reason = (
        f"{load.requests_per_s:.2f} req/s × ISL {load.isl_mean:.0f} = {demand:.0f} tok/s; a worker prefills "
        f"{capacity:.0f} tok/s; ISL p{targets.percentile:g} {load.isl_p:.0f} alone takes {alone_ms:.0f} ms of the "
        f"{targets.ttft_ms:.0f} ms TTFT target → utilisation ≤ {utilisation:.2f}"
    )
    if not feasible:
        reason += " (the target cannot be met even on an idle worker)"
    return Need(need, reason, feasible)


def decode_need(load: Load, profile: Profile, targets: Targets, correction: float = 1.0) -> Need:
    if load.requests_per_s <= 0:
        return Need(0.0, "no requests")
    context = load.isl_p + load.osl_p / 2
    itl_target = targets.itl_ms / correction
    batch, tokens_per_s = profile.decode_capacity(itl_target, context)
    demand = load.requests_per_s * load.osl_mean
    if batch == 0:
        return Need(demand / (1000.0 / profile.itl_ms(1, context)), f"ITL target {itl_target:.1f} ms missed even "
                    f"at batch 1 (context {context:.0f}): one sequence per worker", feasible=False)  # fmt: skip
    reason = (
        f"{load.requests_per_s:.2f} req/s × OSL {load.osl_mean:.0f} = {demand:.0f} tok/s; at context {context:.0f} "
        f"a worker keeps ITL ≤ {itl_target:.1f} ms up to batch {batch} = {tokens_per_s:.0f} tok/s"
    )
    return Need(demand / tokens_per_s, reason)
