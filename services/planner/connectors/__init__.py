"""How the planner changes pool sizes. A connector reports each pool's workers (running or on
their way) and moves a pool to a size: `local` runs worker processes on this machine, `triton`
changes the roles of running workers, `kubernetes` scales Deployments."""

from __future__ import annotations

from typing import Protocol

from kvmesh.v1 import worker_pb2

# An aggregated worker runs whole requests: as a pool it counts with the decode workers.
ROLE_POOL = {worker_pb2.ROLE_PREFILL: "prefill", worker_pb2.ROLE_DECODE: "decode", worker_pb2.ROLE_AGGREGATED: "decode"}


class Connector(Protocol):
    name: str

    def current(self) -> dict[str, int]:
        """Workers per pool ("prefill", "decode"), counting those started but not registered yet."""
        ...

    def scale(self, pool: str, replicas: int) -> str:
        """Moves the pool toward `replicas`; returns what it did, in words."""
        ...

    def resize(self, desired: dict[str, int], current: dict[str, int]) -> dict[str, str]:
        """A planning step's sizes for both pools; what it did per pool it touched, in words."""
        ...


class PoolByPool:
    """resize() as one scale() per pool whose size changes, shrinking pools first: a pool gives up
    its workers before the other claims more, so the budget holds at every moment."""

    def resize(self, desired: dict[str, int], current: dict[str, int]) -> dict[str, str]:
        changing = sorted((p for p in desired if desired[p] != current[p]), key=lambda p: desired[p] - current[p])
        return {pool: self.scale(pool, desired[pool]) for pool in changing}
