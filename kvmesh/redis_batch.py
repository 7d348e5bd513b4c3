"""Redis Function calls made in the same turn of the event loop go to Redis as one pipeline.

redis-py's asyncio client spends about as much CPU on each command as Redis does on a small
function (connection checkout, retry wrapper, timeout context, a write); in a pipeline those are
paid once for all. A busy gateway admits and releases many requests per turn, so its quota calls
ride together; an idle one sends a pipeline of one, as before. Each caller still gets its own
answer or its own error."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from kvmesh import redis_functions


class Coalescer:
    def __init__(self, client: aioredis.Redis, libraries: Sequence[str]):
        """`libraries`: loaded again when Redis says it does not know a function (kvmesh/redis_functions.py)."""
        self.redis = client
        self.libraries = libraries
        self._pending: list[tuple[str, tuple[str, ...], tuple[Any, ...], asyncio.Future]] = []
        self._sending: set[asyncio.Task] = set()

    async def fcall(self, function: str, keys: tuple[str, ...], *args: Any) -> Any:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((function, keys, args, future))
        if len(self._pending) == 1:
            asyncio.get_running_loop().call_soon(self._send_pending)
        return await future

    def _send_pending(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._send(batch))
        self._sending.add(task)  # held until done: a task nobody references may be collected
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list) -> None:
        try:
            answers = await self._pipeline(batch)
            if any(_unknown_function(a) for a in answers):  # Redis restarted or was flushed
                await redis_functions.load(self.redis, self.libraries)
                answers = await self._pipeline(batch)
        except Exception as e:  # noqa: BLE001 - each caller gets the error instead
            for *_, future in batch:
                if not future.done():
                    future.set_exception(e)
            return
        for (*_, future), answer in zip(batch, answers, strict=True):
            if future.done():  # its caller was cancelled
                continue
            if isinstance(answer, Exception):
                future.set_exception(answer)
            else:
                future.set_result(answer)

    async def _pipeline(self, batch: list) -> list:
        pipe = self.redis.pipeline(transaction=False)
        for function, keys, args, _ in batch:
            pipe.fcall(function, len(keys), *keys, *args)
        return await pipe.execute(raise_on_error=False)


def _unknown_function(answer: Any) -> bool:
    return isinstance(answer, ResponseError) and "function not found" in str(answer).lower()
