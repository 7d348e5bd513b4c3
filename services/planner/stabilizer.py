"""Turns each interval's fractional need into a replica count that does not flap: up at once (a
missed SLA costs more than an idle worker), down only after the need has stayed clearly below the
current count for several intervals and the cool-down since the last change has passed; the two
pools together stay within the budget."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Stabilizer:
    down_after: int = 3  # consecutive intervals of lower need before scaling down
    dead_band: float = 0.25  # a worker's fraction the need must fall below current - 1 by
    cooldown_s: float = 60.0  # between two changes of one pool
    min_replicas: int = 1
    _below: int = 0
    _last_change_s: float = field(default=-math.inf)
    _recent: list[int] = field(default_factory=list)

    def decide(self, current: int, need: float, now_s: float) -> tuple[int, str]:
        wanted = max(self.min_replicas, math.ceil(need - 1e-9))
        if wanted > current:
            self._below, self._recent = 0, []
            self._last_change_s = now_s
            return wanted, f"need {need:.2f} > {current}: scale up now"
        if need < current - 1 - self.dead_band + 1e-9 and current > self.min_replicas:
            self._below += 1
            self._recent.append(wanted)
        else:
            self._below, self._recent = 0, []
            return current, f"need {need:.2f} within the band of {current}: hold"
        if self._below < self.down_after:
            return current, f"need {need:.2f} below {current} for {self._below}/{self.down_after} intervals: hold"
        if now_s - self._last_change_s < self.cooldown_s:
            left = self.cooldown_s - (now_s - self._last_change_s)
            return current, f"need {need:.2f} below {current}, cool-down {left:.0f}s left: hold"
        target = max(self._recent[-self.down_after :])  # the highest of the low run, not the last
        self._below, self._recent = 0, []
        self._last_change_s = now_s
        return target, f"need {need:.2f} below {current} for {self.down_after} intervals: scale down"


def fit_budget(
    prefill: int, decode: int, budget: int, current: tuple[int, int] | None = None
) -> tuple[int, int, str | None]:
    """Both pools within `budget` workers, shrunk in proportion, each keeping at least one. When the
    budget binds and the pools already use it, the current split is kept while it is at most one
    worker off the proportional one and neither pool holds more than it wants: both needs exceed
    the budget then, their ratio swings with each interval's noise, and moving a worker back and
    forth between the pools costs a stop and a start each time. A pool with workers to spare gives
    them up."""
    if prefill + decode <= budget:
        return prefill, decode, None
    if budget < 2:
        raise ValueError("a budget below 2 cannot hold a prefill and a decode pool")
    scaled_prefill = min(max(1, round(budget * prefill / (prefill + decode))), budget - 1)
    squeezed = f"wanted {prefill}+{decode}, budget {budget}"
    short_in_both = current is not None and current[0] <= prefill and current[1] <= decode
    if short_in_both and sum(current) == budget and abs(current[0] - scaled_prefill) <= 1:
        return current[0], current[1], f"{squeezed}; the split stays {current[0]}+{current[1]}"
    return scaled_prefill, budget - scaled_prefill, squeezed
