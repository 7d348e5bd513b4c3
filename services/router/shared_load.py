"""In-flight load in Redis (shared_load.lua), so that every router replica sees the same load.

Semantics equal InFlight's (the local fallback): a routed request counts its uncached blocks as
prefill load until MarkPrefilled, then all its blocks as decode load until Release; a lease frees
requests whose gateway vanished.
"""

from __future__ import annotations

import time
from collections import defaultdict
from importlib import resources

import redis.asyncio as aioredis

from kvmesh import redis_functions
from kvmesh.shared_load import KEYS
from services.router.framework.types import Load

LIBRARY = resources.files("services.router").joinpath("shared_load.lua").read_text()
FIELDS = {b"n": "in_flight", b"p": "prefill_blocks", b"d": "decode_blocks"}
# A function call: (name, arguments).
Op = tuple[str, tuple]


class SharedLoad:
    def __init__(self, client: aioredis.Redis, lease_s: float):
        self.redis = client
        self.lease_s = lease_s

    async def apply(self, ops: list[Op]) -> list[int]:
        """Runs `ops` in order in one round trip (a pipeline of function calls)."""

        async def run() -> list[int]:
            pipe = self.redis.pipeline(transaction=False)
            for name, args in ops:
                pipe.fcall(name, len(KEYS), *KEYS, *args)
            return await pipe.execute()

        return await redis_functions.call(self.redis, [LIBRARY], run)

    def add_op(self, request_id: str, worker_id: str, prefill_blocks: int, total_blocks: int) -> Op:
        now = _now_ms()
        deadline = now + int(self.lease_s * 1000)
        return "kvmesh_load_add", (request_id, worker_id, prefill_blocks, total_blocks, deadline, now)

    @staticmethod
    def prefilled_op(request_id: str) -> Op:
        return "kvmesh_load_prefilled", (request_id, _now_ms())

    @staticmethod
    def release_op(request_id: str) -> Op:
        return "kvmesh_load_release", (request_id, _now_ms())

    async def add(self, request_id: str, worker_id: str, prefill_blocks: int, total_blocks: int) -> None:
        await self.apply([self.add_op(request_id, worker_id, prefill_blocks, total_blocks)])

    async def mark_prefilled(self, request_id: str) -> bool:
        return bool((await self.apply([self.prefilled_op(request_id)]))[0])

    async def release(self, request_id: str) -> bool:
        return bool((await self.apply([self.release_op(request_id)]))[0])

    @staticmethod
    def parse(raw: dict[bytes, bytes]) -> dict[str, Load]:
        loads: dict[str, Load] = defaultdict(Load)
        for key, value in raw.items():
            worker, _, field = key.rpartition(b":")
            setattr(loads[worker.decode()], FIELDS[field], max(int(value), 0))
        return dict(loads)

    async def loads(self) -> dict[str, Load]:
        return self.parse(await self.redis.hgetall(KEYS[0]))


def _now_ms() -> int:
    return int(time.time() * 1000)
