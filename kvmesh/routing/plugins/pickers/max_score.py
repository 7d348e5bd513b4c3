"""Takes the highest score; ties are broken at random so equal workers share the load."""

import random

from kvmesh.routing.framework.types import Candidate


class MaxScorePicker:
    name = "max_score"

    def pick(self, scored: list[tuple[Candidate, float]], dry_run: bool) -> Candidate:
        best = max(score for _, score in scored)
        return random.choice([c for c, score in scored if score >= best - 1e-12])
