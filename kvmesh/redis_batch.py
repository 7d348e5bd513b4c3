"""Redis calls of a hot path go to Redis in batches over one connection of their own
(kvmesh/redis_wire.py): calls made while a batch is out wait for it and then leave together.

A busy gateway admits and releases many requests at once, so its quota calls ride together and
each costs a few µs of CPU instead of redis-py's 130–200; an idle one sends a batch of one, at
once; a router's reads and load updates alike. A call nobody waits for at once (`linger_s=`, a
request's release) lingers until the next batch or at most `linger_s`: every write and wake-up of
Redis costs both processes tens of µs, so at low load a request's release rides with the next
one's admission instead of making its own. Each caller still gets its own answers or its own error."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from kvmesh import redis_functions
from kvmesh.redis_wire import RedisWire


class Coalescer:
    def __init__(self, client: aioredis.Redis, libraries: Sequence[str]):
        """`client`: where Redis is (kvmesh/redis_wire.py), and what loads `libraries` again when
        Redis says it does not know a function (kvmesh/redis_functions.py)."""
        self.redis = client
        self.libraries = libraries
        self.wire = RedisWire(client)
        # (the caller's commands, its future, whether it wants one answer or a list)
        self._pending: list[tuple[Sequence[tuple], asyncio.Future, bool]] = []
        self._lingering: list[tuple[Sequence[tuple], asyncio.Future, bool]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._sender: asyncio.Task | None = None  # held while it runs: a task nobody references may be collected

    async def fcall(self, function: str, keys: tuple[str, ...], *args: Any, linger_s: float = 0.0) -> Any:
        """The function's answer; with `linger_s`, the call waits up to that long for other calls to ride with."""
        return await self._call([("FCALL", function, len(keys), *keys, *args)], False, linger_s)

    async def execute(self, commands: Sequence[tuple], linger_s: float = 0.0) -> list:
        """The commands' answers, in order, sent together; the first command Redis refused raises."""
        return await self._call(commands, True, linger_s)

    def _call(self, commands: Sequence[tuple], many: bool, linger_s: float) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not commands:
            future.set_result([])
            return future
        call = (commands, future, many)
        if linger_s > 0:
            self._lingering.append(call)
            if self._timer is None:
                self._timer = loop.call_later(linger_s, self._stop_lingering)
        else:
            self._pending.append(call)
            if self._sender is None:
                self._sender = asyncio.ensure_future(self._send_pending())
        return future

    def _stop_lingering(self) -> None:
        self._timer = None
        if self._sender is None and self._lingering:
            self._sender = asyncio.ensure_future(self._send_pending())

    async def _send_pending(self) -> None:
        try:
            while self._pending or self._lingering:
                # Lingering calls first: a release frees a slot before the admissions beside it ask for one.
                batch, self._lingering, self._pending = self._lingering + self._pending, [], []
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                await self._send(batch)
        finally:
            self._sender = None

    async def _send(self, batch: list) -> None:
        try:
            answered = await self._exchange(batch)
            # Redis restarted or was flushed: the callers it did not know a function of go again
            # (only they: another's commands ran, and a write must not run twice).
            again = [i for i, answers in enumerate(answered) if any(map(_unknown_function, answers))]
            if again:
                await redis_functions.load(self.redis, self.libraries)
                for i, answers in zip(again, await self._exchange([batch[i] for i in again]), strict=True):
                    answered[i] = answers
        except Exception as e:  # noqa: BLE001 - each caller gets the error instead
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(e)
            return
        for (_, future, many), answers in zip(batch, answered, strict=True):
            if future.done():  # its caller was cancelled
                continue
            if refused := next((a for a in answers if isinstance(a, Exception)), None):
                future.set_exception(refused)
            else:
                future.set_result(answers if many else answers[0])

    async def _exchange(self, batch: list) -> list[list]:
        """Each call's answers, in one round trip."""
        answers = await self.wire.exchange([command for commands, _, _ in batch for command in commands])
        out, start = [], 0
        for commands, _, _ in batch:
            out.append(answers[start : start + len(commands)])
            start += len(commands)
        return out


def _unknown_function(answer: Any) -> bool:
    return isinstance(answer, ResponseError) and "function not found" in str(answer).lower()
