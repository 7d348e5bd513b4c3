"""Keeps workers whose role may run the phase being routed (Request.roles)."""

from services.router.framework.types import Candidate, Request


class RoleFilter:
    name = "role"

    def keep(self, request: Request, candidate: Candidate) -> bool:
        return candidate.record.role in request.roles
