"""The yardstick of bench.planner_eval: the cheapest fixed allocation that meets the SLA goal,
searched over both pools.

A fixed allocation is P prefill and D decode workers (each at least 1, P + D within the budget).
It costs (P + D) × the replay's duration in worker-seconds, so the cheapest is the one with the
fewest workers; allocations of equal size cost the same, and the first found stands. Every try
replays a trace (minutes), so the search leans on one fact to skip runs: more workers in either
pool never lower attainment, so an allocation that misses the goal condemns every one with no
more of either kind, without a run.

The walk goes down from the budget one worker at a time. At each size it tries the allocations
not yet decided, nearest the last one that met first (the balanced split at the top), and stops
at the first size at which none meets: the last allocation that met is the cheapest. Proving an
answer needs every allocation one worker smaller to miss, so the walk costs little more than that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Allocation:
    prefill: int
    decode: int

    @property
    def workers(self) -> int:
        return self.prefill + self.decode

    def __str__(self) -> str:
        return f"{self.prefill}P+{self.decode}D"


@dataclass
class Search:
    cheapest: Allocation | None
    # Attainment of every allocation that was run, in the order they ran.
    tried: dict[Allocation, float]


def cheapest_allocation(attainment: Callable[[Allocation], float], budget: int, goal: float) -> Search:
    """`attainment(a)` runs allocation `a` and returns its share of requests within the SLA targets;
    it is called at most once for any allocation."""
    tried: dict[Allocation, float] = {}

    def meets(a: Allocation) -> bool:
        if any(t.prefill >= a.prefill and t.decode >= a.decode and v < goal for t, v in tried.items()):
            return False
        tried[a] = attainment(a)
        return tried[a] >= goal

    cheapest = None
    for workers in range(budget, 1, -1):
        # Nearest the last allocation that met: the two one worker smaller than it come first.
        centre = cheapest.decode - 0.5 if cheapest else workers / 2
        candidates = sorted(
            [Allocation(workers - d, d) for d in range(1, workers)], key=lambda a: abs(a.decode - centre)
        )
        met = next((a for a in candidates if meets(a)), None)
        if met is None:
            break
        cheapest = met
    return Search(cheapest, tried)
