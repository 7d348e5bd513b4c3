"""The Redis keys of the in-flight load that every router replica shares (the router keeps it with
kvmesh/routing/shared_load.lua) and the one read a worker needs: how many of the requests routed
to it are not done yet."""

from __future__ import annotations

import redis.asyncio as aioredis

# One hash tag, one slot: <worker>:n | :p | :d → requests, prefill blocks, decode blocks;
# <request id> → its entry; <request id> by lease deadline.
KEYS = ("kvload:{load}:workers", "kvload:{load}:requests", "kvload:{load}:deadlines")


async def routed_requests(client: aioredis.Redis, worker_id: str) -> int:
    """Requests routed to `worker_id` that their gateway has not released yet."""
    value = await client.hget(KEYS[0], f"{worker_id}:n")
    return max(int(value or 0), 0)
