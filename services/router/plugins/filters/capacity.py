"""Drops workers whose in-flight requests reach capacity × queue_factor.

The engine queues what it cannot batch, so a worker takes more than its batch capacity; the factor
bounds that queue so that a full mesh answers RESOURCE_EXHAUSTED instead of queueing without end.
"""

from dataclasses import dataclass

from services.router.framework.types import Candidate, Request


@dataclass
class CapacityFilter:
    queue_factor: float = 8.0
    name: str = "capacity"

    def keep(self, request: Request, candidate: Candidate) -> bool:
        limit = max(1, int(candidate.record.capacity * self.queue_factor))
        return candidate.load.in_flight < limit
