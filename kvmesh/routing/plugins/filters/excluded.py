"""Drops the workers the caller saw fail for this request (a retry after a worker died)."""

from kvmesh.routing.framework.types import Candidate, Request


class ExcludedFilter:
    name = "excluded"

    def keep(self, request: Request, candidates: list[Candidate]) -> list[Candidate]:
        if not request.excluded:  # a first attempt: nothing to drop
            return candidates
        return [c for c in candidates if c.id not in request.excluded]
