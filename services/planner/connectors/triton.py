"""The `triton` connector: a fixed set of running Triton workers whose roles change. A worker
leaves one pool only to join the other, and each pool keeps at least one. The connector asks a
worker, through the registry, to run the other pool's model (`<engine>_<pool>`); the worker drains,
swaps the model through Triton's repository API and registers again with its new role
(services/worker/role_change.py)."""

from __future__ import annotations

import time
from collections.abc import Callable

from kvmesh.registry import CHANGEABLE_ROLES
from kvmesh.v1 import worker_pb2
from services.planner.connectors import ROLE_POOL

OTHER = {"prefill": "decode", "decode": "prefill"}


class TritonConnector:
    name = "triton"

    def __init__(
        self,
        records: Callable[[], dict[str, worker_pb2.WorkerRecord]],
        assign: Callable[[str, str], None],
        engine: str,
        assignment_ttl_s: float,
    ):
        """`records()`: the live workers; `assign(worker_id, triton_model)` asks one to change
        (the request lapses after `assignment_ttl_s`, and so does the count of it here)."""
        self.records = records
        self.assign = assign
        self.engine = engine
        self.assignment_ttl_s = assignment_ttl_s
        self.moving: dict[str, tuple[str, float]] = {}  # worker id → (pool it joins, asked at)

    def current(self) -> dict[str, int]:
        """Workers per pool, a worker asked to move counted in the pool it joins."""
        records = self.records()
        now = time.monotonic()
        self.moving = {
            wid: (pool, at)
            for wid, (pool, at) in self.moving.items()
            if wid in records and ROLE_POOL.get(records[wid].role) != pool and now - at < self.assignment_ttl_s
        }
        counts = {"prefill": 0, "decode": 0}
        for wid, record in records.items():
            counts[self.moving[wid][0] if wid in self.moving else ROLE_POOL.get(record.role, "decode")] += 1
        return counts

    def scale(self, pool: str, replicas: int) -> str:
        """Makes `pool` `replicas` strong, with workers from or for the other pool."""
        counts = self.current()
        if replicas > counts[pool]:
            return self._move(OTHER[pool], pool, replicas - counts[pool])
        if replicas < counts[pool]:
            return self._move(pool, OTHER[pool], counts[pool] - replicas)
        return "nothing to move"

    def resize(self, desired: dict[str, int], current: dict[str, int]) -> dict[str, str]:
        """A planning step: workers move only from a pool with more than it needs to one that needs
        more. A surplus alone stays where it is (the fleet is fixed: moving it would serve nothing,
        and the next dip in the other pool's need would move it back). `current`: this step's
        current(), workers on their way counted where they go."""
        for source, target in (("prefill", "decode"), ("decode", "prefill")):
            n = min(desired[target] - current[target], current[source] - desired[source])
            if n > 0:
                return {target: self._move(source, target, n)}
        return {}

    def _move(self, source: str, target: str, wanted: int) -> str:
        settled = [r for wid, r in self.records().items() if wid not in self.moving and ROLE_POOL.get(r.role) == source]
        movable = sorted(
            (r for r in settled if r.role in CHANGEABLE_ROLES and not r.draining),
            key=lambda r: r.started_unix_ms,
            reverse=True,  # the newest: the least of the cache is lost
        )
        # One settled worker stays: a worker on its way may still fail to arrive.
        chosen = movable[: min(wanted, len(settled) - 1)]
        for record in chosen:
            self.assign(record.id, f"{self.engine}_{target}")
            self.moving[record.id] = (target, time.monotonic())
        done = f"asked {', '.join(r.id for r in chosen) or 'none'} to move from {source} to {target}"
        if len(chosen) < wanted:
            done += f" ({wanted - len(chosen)} short: the {source} pool keeps one worker, and only idle ones move)"
        return done
