"""Where in-flight load is written: this router's InFlight always (the fallback while Redis is
away) and the shared load in Redis (what every replica reads)."""

from __future__ import annotations

from redis.exceptions import RedisError

from services.router.inflight import InFlight
from services.router.redis_health import RedisHealth
from services.router.shared_load import SharedLoad


class Accounting:
    def __init__(self, local: InFlight, shared: SharedLoad, health: RedisHealth):
        self.local = local
        self.shared = shared
        self.health = health

    async def _shared(self, call) -> None:
        try:
            await call
            self.health.ok()
        except (RedisError, OSError) as e:
            self.health.failed(e)

    async def add(self, request_id: str, worker_id: str, prefill_blocks: int, total_blocks: int) -> None:
        self.local.add(request_id, worker_id, prefill_blocks, total_blocks)
        await self._shared(self.shared.add(request_id, worker_id, prefill_blocks, total_blocks))

    async def mark_prefilled(self, request_id: str) -> None:
        self.local.mark_prefilled(request_id)
        await self._shared(self.shared.mark_prefilled(request_id))

    async def release(self, request_id: str) -> None:
        self.local.release(request_id)
        await self._shared(self.shared.release(request_id))
