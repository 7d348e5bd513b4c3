"""The candidates of one decision: live workers, each with its load and its KV overlap with the
request, read in ONE Redis round trip (the index match and the shared load, pipelined).

Without Redis: no overlap, and this router's own in-flight counts as the load.
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from kvmesh import block_index, load_keys, redis_functions
from kvmesh.registry import Watcher
from services.router.accounting import Accounting
from services.router.framework.types import Candidate, Request
from services.router.shared_load import LoadTable

EXPIRY_INTERVAL_S = 1.0


class CandidateSource:
    def __init__(self, workers: Watcher, client: aioredis.Redis, accounting: Accounting):
        self.workers = workers
        self.redis = client
        self.accounting = accounting
        self._next_expiry = 0.0

    async def gather(self, request: Request) -> list[Candidate]:
        # Leases last minutes: a sweep a second is enough, and a sweep walks every request in flight.
        if (now := time.monotonic()) >= self._next_expiry:
            self._next_expiry = now + EXPIRY_INTERVAL_S
            self.accounting.local.expire(set(self.workers.workers))
        try:
            overlaps, loads = await redis_functions.call(self.redis, [block_index.LIBRARY], lambda: self._read(request))
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
        pipe = self.redis.pipeline(transaction=False)
        if request.block_hashes:
            keys = block_index.match_keys(request.block_hashes)
            pipe.fcall_ro("kvmesh_match", len(keys), *keys)
        pipe.hgetall(load_keys.KEYS[0])
        replies = await pipe.execute()
        overlaps = block_index.parse_match(replies[0]) if request.block_hashes else {}
        return overlaps, LoadTable(replies[-1])
