"""Where in-flight load is written: this router's InFlight at once (what it routes by while
Redis is away) and the shared load in Redis (what every replica reads).

Shared writes leave the request path: a single writer sends them in order, every write queued
meanwhile in one pipelined round trip, so a Route answers after one Redis read, not two.
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError, ResponseError

from kvmesh.routing.inflight import InFlight
from kvmesh.routing.redis_health import RedisHealth
from kvmesh.routing.shared_load import Op, SharedLoad

log = logging.getLogger(__name__)
MAX_PIPELINE = 512


class Accounting:
    def __init__(self, local: InFlight, shared: SharedLoad, health: RedisHealth):
        self.local = local
        self.shared = shared
        self.health = health
        self._pending: asyncio.Queue[Op] = asyncio.Queue()
        self._writer: asyncio.Task | None = None

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write())

    async def stop(self) -> None:
        """Sends what is queued, then stops."""
        while not self._pending.empty() and self.health.reachable:
            await asyncio.sleep(0.01)
        if self._writer:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)

    def add(self, request_id: str, worker_id: str, prefill_blocks: int, total_blocks: int) -> None:
        self.local.add(request_id, worker_id, prefill_blocks, total_blocks)
        self._pending.put_nowait(self.shared.add_op(request_id, worker_id, prefill_blocks, total_blocks))

    def mark_prefilled(self, request_id: str) -> None:
        self.local.mark_prefilled(request_id)
        self._pending.put_nowait(self.shared.prefilled_op(request_id))

    def release(self, request_id: str) -> None:
        self.local.release(request_id)
        self._pending.put_nowait(self.shared.release_op(request_id))

    async def _write(self) -> None:
        while True:
            ops = [await self._pending.get()]
            while not self._pending.empty() and len(ops) < MAX_PIPELINE:
                ops.append(self._pending.get_nowait())
            try:
                await self.shared.apply(ops)
                self.health.ok()
            except ResponseError:  # Redis answered: a fault of ours, not an outage
                log.exception("shared load update refused by Redis")
            except (RedisError, OSError) as e:
                # Lost while Redis is away; leases clean up what this leaves behind.
                self.health.failed(e)
