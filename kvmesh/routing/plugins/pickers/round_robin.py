"""Each candidate in turn, in worker-id order; scores are ignored."""

from kvmesh.routing.framework.types import Candidate


class RoundRobinPicker:
    name = "round_robin"

    def __init__(self) -> None:
        self._next = 0

    def pick(self, scored: list[tuple[Candidate, float]], dry_run: bool) -> Candidate:
        ordered = sorted((c for c, _ in scored), key=lambda c: c.id)
        chosen = ordered[self._next % len(ordered)]
        if not dry_run:
            self._next += 1
        return chosen
