"""Keeps workers whose role may run the phase being routed (Request.roles)."""

from kvmesh.routing.framework.types import Candidate, Request


class RoleFilter:
    name = "role"

    def keep(self, request: Request, candidates: list[Candidate]) -> list[Candidate]:
        roles = request.roles
        kept = [c for c in candidates if c.record.role in roles]
        return candidates if len(kept) == len(candidates) else kept
