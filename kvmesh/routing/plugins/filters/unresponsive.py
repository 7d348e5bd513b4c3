"""Drops workers whose engine does not answer (WorkerRecord.unresponsive, set by the worker's
heartbeat): a hung Triton still holds its lease, and a request sent there would wait for it."""

from kvmesh.routing.framework.types import Candidate, Request


class UnresponsiveFilter:
    name = "unresponsive"

    def keep(self, request: Request, candidates: list[Candidate]) -> list[Candidate]:
        if not any(c.record.unresponsive for c in candidates):
            return candidates
        return [c for c in candidates if not c.record.unresponsive]
