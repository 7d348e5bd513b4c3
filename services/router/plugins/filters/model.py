"""Keeps workers that serve the requested model."""

from services.router.framework.types import Candidate, Request


class ModelFilter:
    name = "model"

    def keep(self, request: Request, candidate: Candidate) -> bool:
        return candidate.record.model == request.model
