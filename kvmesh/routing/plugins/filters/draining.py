"""Drops workers that are changing role: they finish what they have and take nothing new."""

from kvmesh.routing.framework.types import Candidate, Request


class DrainingFilter:
    name = "draining"

    def keep(self, request: Request, candidates: list[Candidate]) -> list[Candidate]:
        if not any(c.record.draining for c in candidates):
            return candidates
        return [c for c in candidates if not c.record.draining]
