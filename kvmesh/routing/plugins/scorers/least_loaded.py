"""Prefers workers with fewer requests in flight, relative to their capacity."""

from kvmesh.routing.framework.types import Candidate, Request


class LeastLoadedScorer:
    name = "least_loaded"

    def score(self, request: Request, candidates: list[Candidate]) -> dict[str, float]:
        return {c.id: 1.0 - c.load.in_flight / max(c.record.capacity, 1) for c in candidates}
