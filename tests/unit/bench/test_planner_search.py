"""bench.planner_search finds the cheapest fixed (prefill, decode) allocation that meets the SLA goal
within the budget, over both pools, runs each allocation at most once and skips the allocations
that monotonicity already condemns."""

from __future__ import annotations

import pytest

from bench.planner_search import Allocation, cheapest_allocation

GOAL = 0.95


def needs(prefill: int, decode: int):
    """A trace on which an allocation meets the goal once it has `prefill` and `decode` workers."""
    return lambda a: 0.99 if a.prefill >= prefill and a.decode >= decode else 0.5


def trade_off(a: Allocation) -> float:
    """Either pool can make up for the other: one decode worker is worth two prefill ones."""
    return 0.99 if a.prefill + 2 * a.decode >= 8 else 0.5


CASES = {
    # (attainment, budget, the cheapest, the most runs allowed)
    "short outputs: more prefill": (needs(4, 1), 6, Allocation(4, 1), 3),
    "long outputs: more decode": (needs(1, 3), 6, Allocation(1, 3), 4),
    "balanced": (needs(2, 2), 6, Allocation(2, 2), 5),
    "either pool makes up for the other": (trade_off, 6, Allocation(2, 3), 4),
    "the whole budget": (needs(3, 3), 6, Allocation(3, 3), 5),
    "nothing meets within the budget": (needs(4, 3), 6, None, 5),
    "a budget of one allocation": (needs(1, 1), 2, Allocation(1, 1), 1),
    "a larger budget": (needs(7, 2), 12, Allocation(7, 2), 7),
}


@pytest.mark.parametrize("name", CASES)
def test_finds_the_cheapest(name):
    attainment, budget, cheapest, most_runs = CASES[name]
    runs: list[Allocation] = []

    def run(a: Allocation) -> float:
        assert a.prefill >= 1 and a.decode >= 1 and a.workers <= budget
        runs.append(a)
        return attainment(a)

    search = cheapest_allocation(run, budget, GOAL)
    assert search.cheapest == cheapest
    assert len(runs) == len(set(runs)) <= most_runs
    assert list(search.tried) == runs
    assert search.tried == {a: attainment(a) for a in runs}
    everything = [Allocation(p, w - p) for w in range(2, budget + 1) for p in range(1, w)]
    meeting = [a.workers for a in everything if attainment(a) >= GOAL]
    assert (cheapest.workers if cheapest else None) == (min(meeting) if meeting else None)


def test_a_miss_condemns_the_smaller_allocations_without_a_run():
    runs: list[Allocation] = []
    cheapest_allocation(lambda a: runs.append(a) or 0.0, 6, GOAL)
    # The top allocations all miss: every smaller one is condemned by one of them.
    assert sorted(a.workers for a in runs) == [6] * 5
