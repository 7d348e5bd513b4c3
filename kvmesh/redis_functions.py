"""Redis Function libraries: load them, and load them again when Redis lost them (a restart or a
FLUSHALL), so that callers never have to care."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

T = TypeVar("T")


async def load(client: aioredis.Redis, libraries: Sequence[str]) -> None:
    for library in libraries:
        await client.function_load(library, replace=True)


async def call(client: aioredis.Redis, libraries: Sequence[str], run: Callable[[], Awaitable[T]]) -> T:
    """`run()`, once more after reloading `libraries` if Redis does not know a function."""
    try:
        return await run()
    except ResponseError as e:
        if "function not found" not in str(e).lower():
            raise
    await load(client, libraries)
    return await run()
