"""Drops workers whose engine does not answer (WorkerRecord.unresponsive, set by the worker's
heartbeat): a hung Triton still holds its lease, and a request sent there would wait for it."""

from services.router.framework.types import Candidate, Request


class UnresponsiveFilter:
    name = "unresponsive"

    def keep(self, request: Request, candidate: Candidate) -> bool:
        return not candidate.record.unresponsive
