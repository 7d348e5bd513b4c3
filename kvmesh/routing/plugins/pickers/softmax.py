"""Samples a candidate with probability ∝ exp(normalised score / temperature), so that a stream
of similar requests spreads over near-equal workers instead of piling onto one. Temperature 0
is max_score (ties random)."""

import math
import random

from kvmesh.routing.framework.types import Candidate
from kvmesh.routing.plugins.pickers.max_score import MaxScorePicker


class SoftmaxPicker:
    name = "softmax"

    def __init__(self, temperature: float = 0.0):
        if temperature < 0:
            raise ValueError(f"softmax temperature must be ≥ 0, got {temperature}")
        self.temperature = temperature
        self._greedy = MaxScorePicker()

    def pick(self, scored: list[tuple[Candidate, float]], dry_run: bool) -> Candidate:
        if self.temperature == 0:
            return self._greedy.pick(scored, dry_run)
        low = min(score for _, score in scored)
        span = (max(score for _, score in scored) - low) or 1.0
        weights = [math.exp((score - low) / span / self.temperature) for _, score in scored]
        return random.choices([c for c, _ in scored], weights=weights)[0]
