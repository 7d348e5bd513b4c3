"""Keeps workers whose role matches the phase being routed."""

from services.router.framework.types import Candidate, Request


class RoleFilter:
    name = "role"

    def keep(self, request: Request, candidate: Candidate) -> bool:
        return candidate.record.role == request.role
