"""The candidates of one decision: live workers, each with its load and its KV overlap with the
request, read in ONE Redis round trip (the index match and the shared load, in the router's
batch of the moment: kvmesh/redis_batch.py).

Without Redis: no overlap, and this router's own in-flight counts as the load.
"""

from __future__ import annotations

import time

from redis.exceptions import RedisError

from kvmesh import block_index
from kvmesh.redis_batch import Coalescer
from kvmesh.registry import Watcher
from services.router.accounting import Accounting
from services.router.framework.types import Candidate, Request
from services.router.shared_load import LoadTable, load_command

EXPIRY_INTERVAL_S = 1.0


class CandidateSource:
    def __init__(self, workers: Watcher, calls: Coalescer, accounting: Accounting):
        """`calls`: the router's batched Redis calls, whose libraries include block_index's."""
        self.workers = workers
        self.calls = calls
        self.accounting = accounting
        self._next_expiry = 0.0

    async def gather(self, request: Request) -> list[Candidate]:
        # Leases last minutes: a sweep a second is enough, and a sweep walks every request in flight.
        if (now := time.monotonic()) >= self._next_expiry:
            self._next_expiry = now + EXPIRY_INTERVAL_S
            self.accounting.local.expire(set(self.workers.workers))
        try:
            overlaps, loads = await self._read(request)
            self.accounting.health.ok()
        except (RedisError, OSError) as e:
            self.accounting.health.failed(e)
            overlaps, loads = {}, None
        out = []
        for worker_id, live in self.workers.workers.items():
            load = loads[worker_id] if loads is not None else self.accounting.local.load(worker_id)
            same_blocks = live.record.kv_block_size == request.block_size
            out.append(Candidate(live.record, load, overlaps.get(worker_id, 0) if same_blocks else 0))
        return out

    async def _read(self, request: Request) -> tuple[dict[str, int], LoadTable]:
        commands = [load_command()]
        if request.block_hashes:
            keys = block_index.match_keys(request.block_hashes)
            commands.append(("FCALL_RO", "kvmesh_match", len(keys), *keys))
        replies = await self.calls.execute(commands)
        overlaps = block_index.parse_match(replies[1]) if request.block_hashes else {}
        return overlaps, LoadTable.of_reply(replies[0])
