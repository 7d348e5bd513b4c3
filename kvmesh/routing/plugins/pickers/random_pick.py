"""Uniformly at random; scores are ignored."""

import random

from kvmesh.routing.framework.types import Candidate


class RandomPicker:
    name = "random"

    def pick(self, scored: list[tuple[Candidate, float]], dry_run: bool) -> Candidate:
        return random.choice(scored)[0]
