"""How many prefill and decode workers a forecast load needs to meet the targets, from a profile.

Prefill: the p-th percentile prompt must finish within the TTFT target on an idle worker; what is
left of the target is the time a request may wait for a worker. The router sends each request to
the least-loaded worker, so a pool is one queue before c workers (M/M/c): the need is the fewest
workers whose chance of a wait beyond that slack is at most 1 - p (Erlang C). (Treating each
worker as a queue of its own, M/M/1, asked for 5–20× too many workers when a few long prompts
leave little slack: four ~7k-token prompts in 2 s "needed" 22, Erlang C says 5.) Decode: the
p-th percentile request, halfway through its output, sets the context; the largest batch meeting
the ITL target there sets a worker's tokens/s. Both scale by a correction, observed over
predicted latency, so that a profile that flatters the engine is corrected by what the mesh
measures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kvmesh.profile import EngineProfile

MAX_UTILISATION = 0.95
# More would say the load is beyond any budget; the search stops there.
MAX_WORKERS = 1000


@dataclass(frozen=True)
class Traffic:
    """What the mesh is asked to serve in one interval: the request rate and the prompt (ISL) and
    output (OSL) lengths."""

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


def prefill_need(traffic: Traffic, profile: EngineProfile, targets: Targets, correction: float = 1.0) -> Need:
    if traffic.requests_per_s <= 0:
        return Need(0.0, "no requests")
    alone_ms = profile.ttft_ms(traffic.isl_p) * correction
    service_s = traffic.isl_mean / profile.prefill_tokens_per_s(traffic.isl_mean) * correction
    slack_ms = targets.ttft_ms - alone_ms
    feasible = slack_ms > 0
    tail = 1.0 - targets.percentile / 100.0
    offered = traffic.requests_per_s * service_s  # workers busy on average (Erlangs)
    workers = waiting_workers(offered, max(slack_ms, 0.0) / 1000.0 / service_s, tail)
    reason = (
        f"{traffic.requests_per_s:.2f} req/s × {service_s * 1000:.0f} ms (ISL {traffic.isl_mean:.0f}) = {offered:.2f} "
        f"workers busy; ISL p{targets.percentile:g} {traffic.isl_p:.0f} alone takes {alone_ms:.0f} ms of the "
        f"{targets.ttft_ms:.0f} ms TTFT target → {workers} workers keep P(wait > {max(slack_ms, 0):.0f} ms) ≤ {tail:g}"
    )
    if not feasible:
        reason += " (the target cannot be met even on an idle worker; no waiting at all)"
    return Need(float(workers), reason, feasible)


def waiting_workers(offered: float, slack_in_services: float, tail: float) -> int:
    """The fewest workers c of an M/M/c queue with `offered` Erlangs, at most MAX_UTILISATION
    busy, for which P(wait > slack) = C(c, a)·exp(-(c - a)·slack/S) ≤ `tail` (C: Erlang C, the
    chance of waiting at all; slack in mean service times)."""
    c = max(1, math.ceil(offered / MAX_UTILISATION))
    erlang_b = 1.0  # Erlang B by its recurrence, numerically stable for any c
    for k in range(1, c + 1):
        erlang_b = offered * erlang_b / (k + offered * erlang_b)
    while c < MAX_WORKERS:
        waits = c * erlang_b / (c - offered * (1.0 - erlang_b))
        if waits * math.exp(-(c - offered) * slack_in_services) <= tail:
            return c
        c += 1
        erlang_b = offered * erlang_b / (c + offered * erlang_b)
    return MAX_WORKERS


def decode_need(traffic: Traffic, profile: EngineProfile, targets: Targets, correction: float = 1.0) -> Need:
    if traffic.requests_per_s <= 0:
        return Need(0.0, "no requests")
    context = traffic.isl_p + traffic.osl_p / 2
    itl_target = targets.itl_ms / correction
    batch, tokens_per_s = profile.decode_capacity(itl_target, context)
    demand = traffic.requests_per_s * traffic.osl_mean
    if batch == 0:
        return Need(demand / (1000.0 / profile.itl_ms(1, context)), f"ITL target {itl_target:.1f} ms missed even "
                    f"at batch 1 (context {context:.0f}): one sequence per worker", feasible=False)  # fmt: skip
    reason = (
        f"{traffic.requests_per_s:.2f} req/s × OSL {traffic.osl_mean:.0f} = {demand:.0f} tok/s; at context "
        f"{context:.0f} a worker keeps ITL ≤ {itl_target:.1f} ms up to batch {batch} = {tokens_per_s:.0f} tok/s"
    )
    return Need(demand / tokens_per_s, reason)
