"""Drops workers that are changing role: they finish what they have and take nothing new."""

from services.router.framework.types import Candidate, Request


class DrainingFilter:
    name = "draining"

    def keep(self, request: Request, candidate: Candidate) -> bool:
        return not candidate.record.draining
