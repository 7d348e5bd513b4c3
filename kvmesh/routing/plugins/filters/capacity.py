"""Drops workers whose in-flight requests reach capacity × queue_factor.

The engine queues what it cannot batch, so a worker takes more than its batch capacity; the factor
bounds that queue so that a full mesh answers RESOURCE_EXHAUSTED instead of queueing without end.
"""

from dataclasses import dataclass

from kvmesh.routing.framework.types import Candidate, Request


@dataclass
class CapacityFilter:
    queue_factor: float = 8.0
    name: str = "capacity"

    def keep(self, request: Request, candidates: list[Candidate]) -> list[Candidate]:
        factor = self.queue_factor
        # in_flight < max(1, int(capacity × factor)), without two calls a worker: an idle worker
        # always takes one, and for whole numbers n < int(x) ⟺ n + 1 ≤ x.
        kept = [c for c in candidates if not c.load.in_flight or c.load.in_flight + 1 <= c.record.capacity * factor]
        return candidates if len(kept) == len(candidates) else kept
