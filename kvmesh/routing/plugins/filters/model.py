"""Keeps workers that serve the requested model."""

from kvmesh.routing.framework.types import Candidate, Request


class ModelFilter:
    name = "model"

    def keep(self, request: Request, candidates: list[Candidate]) -> list[Candidate]:
        model = request.model
        kept = [c for c in candidates if c.record.model == model]
        return candidates if len(kept) == len(candidates) else kept
