"""Drops the workers the caller saw fail for this request (a retry after a worker died)."""

from services.router.framework.types import Candidate, Request


class ExcludedFilter:
    name = "excluded"

    def keep(self, request: Request, candidate: Candidate) -> bool:
        return candidate.id not in request.excluded
