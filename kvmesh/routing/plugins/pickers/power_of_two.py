"""Power of two choices: two candidates at random, the better-scored wins."""

import random

from kvmesh.routing.framework.types import Candidate


class PowerOfTwoPicker:
    name = "power_of_two"

    def pick(self, scored: list[tuple[Candidate, float]], dry_run: bool) -> Candidate:
        pair = random.sample(scored, min(2, len(scored)))
        return max(pair, key=lambda item: item[1])[0]
