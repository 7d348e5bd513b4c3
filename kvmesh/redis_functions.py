"""Redis Function libraries: load them (kvmesh/redis_batch.py loads them again when Redis lost
them, a restart or a FLUSHALL, so that callers never have to care)."""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis


async def load(client: aioredis.Redis, libraries: Sequence[str]) -> None:
    for library in libraries:
        await client.function_load(library, replace=True)
