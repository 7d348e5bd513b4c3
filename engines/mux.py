"""Batched delivery: one Triton response per turn of the engine's loop carries the new tokens of
every request a client sent through its mux, instead of one response per request per token. The
protocol (opening, requests on the mux's stream, batches, errors, cancelling, idle close, and the
Triton constraints behind them) is specified in docs/mux.md; the client's side is
services/gateway/engine_mux.py, the message shapes kvmesh/engine_wire.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from kvmesh.engine_wire import MUX_IDLE_CLOSE_S, EngineDelta, MuxDelta, MuxEntry, MuxError, encode_batch

log = logging.getLogger(__name__)

# How often the model asks Triton whether a mux's client went away (an IPC round trip each).
CHECK_S = 1.0

# Sends one mux_deltas payload on the mux's stream (final: its last); resolves once Triton has it.
SendBatch = Callable[[bytes, bool], Awaitable[None]]
IsCancelled = Callable[[], Awaitable[bool]]


class Mux:
    """One client's batches. At most one batch is in flight: deltas that come meanwhile gather
    into the next, so a slower client gets fewer, larger responses instead of a queue."""

    def __init__(self, mux_id: str, send_batch: SendBatch, is_cancelled: IsCancelled):
        self.id = mux_id
        self._send_batch = send_batch
        self.is_cancelled = is_cancelled
        self.members: set[str] = set()  # request ids in flight
        self.cancelled: set[str] = set()  # members whose client went away
        self.abandoned = False  # the mux's client went away: every member is cancelled
        self.idle_since = time.monotonic()
        self._batch: list[MuxEntry] = []
        self._batch_sent: asyncio.Future | None = None
        self._busy = False  # a batch is in flight or a flush is scheduled
        self.broken: BaseException | None = None

    def join(self, request_id: str) -> None:
        self.members.add(request_id)

    def leave(self, request_id: str) -> None:
        self.members.discard(request_id)
        self.cancelled.discard(request_id)
        if not self.members:
            self.idle_since = time.monotonic()

    def cancel(self, request_id: str) -> None:
        if request_id in self.members:
            self.cancelled.add(request_id)

    def member_cancelled(self, request_id: str) -> bool:
        return self.abandoned or request_id in self.cancelled

    def add(self, entry: MuxEntry) -> asyncio.Future:
        """Queues a request's delta or error; the future resolves when the batch holding it is sent."""
        if self.broken is not None:
            raise ConnectionError(f"mux {self.id}: {self.broken}")
        loop = asyncio.get_running_loop()
        if self._batch_sent is None:
            self._batch_sent = loop.create_future()
        self._batch.append(entry)
        if not self._busy:
            # After this turn of the loop: the other requests woken by the same engine step add theirs.
            self._busy = True
            loop.call_soon(self._flush)
        # Shielded: a request cancelled while it waits must not cancel its batch-mates' wait.
        return asyncio.shield(self._batch_sent)

    def _flush(self) -> None:
        batch, done = self._batch, self._batch_sent
        self._batch, self._batch_sent = [], None
        assert done is not None
        sent = asyncio.ensure_future(self._send_batch(encode_batch(batch), False))
        sent.add_done_callback(lambda f: self._sent(f, done))

    def _sent(self, sent: asyncio.Future, done: asyncio.Future) -> None:
        error = ConnectionError("the send was cancelled") if sent.cancelled() else sent.exception()
        if error is None:
            if not done.done():
                done.set_result(None)
            if self._batch:
                self._flush()
            else:
                self._busy = False
            return
        self.broken = error
        log.warning("mux %s: a batch failed: %s", self.id, error)
        for waiting in (done, self._batch_sent):
            if waiting is not None and not waiting.done():
                waiting.set_exception(error)
        self._batch, self._batch_sent = [], None

    async def close(self) -> None:
        await self._send_batch(encode_batch(None), True)


class MuxHub:
    """The open muxes of one model instance; lives on the engine's loop."""

    def __init__(self, idle_close_s: float = MUX_IDLE_CLOSE_S, check_s: float = CHECK_S):
        self.muxes: dict[str, Mux] = {}
        self.idle_close_s = idle_close_s
        self.check_s = check_s
        self._watcher: asyncio.Task | None = None

    async def open(self, mux_id: str, send_batch: SendBatch, is_cancelled: IsCancelled) -> None:
        if mux_id in self.muxes:
            await send_batch(encode_batch(None), True)  # one stream per id: the second one ends at once
            return
        mux = self.muxes[mux_id] = Mux(mux_id, send_batch, is_cancelled)
        await send_batch(encode_batch([]), False)
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch())
        log.info("mux %s opened", mux.id)

    def cancel(self, mux_id: str, request_id: str) -> None:
        if (mux := self.muxes.get(mux_id)) is not None:
            mux.cancel(request_id)

    def get(self, mux_id: str | None) -> Mux | None:
        mux = self.muxes.get(mux_id) if mux_id else None
        return mux if mux is not None and mux.broken is None and not mux.abandoned else None

    async def _watch(self) -> None:
        while self.muxes:
            await asyncio.sleep(self.check_s)
            for mux in list(self.muxes.values()):
                await self._check(mux)
        self._watcher = None

    async def _check(self, mux: Mux) -> None:
        """Cancels the requests of a mux whose client went away; ends a mux that is idle, broken,
        or whose client went away, once it has no request in flight."""
        try:
            if mux.broken is None and not mux.abandoned and await mux.is_cancelled():
                mux.abandoned = True
                log.info("mux %s: its client went away; cancelling its %d requests", mux.id, len(mux.members))
            if mux.members and mux.broken is None:
                return
            if mux.broken is None and not mux.abandoned and time.monotonic() - mux.idle_since < self.idle_close_s:
                return
            del self.muxes[mux.id]
            await mux.close()
            log.info("mux %s closed", mux.id)
        except Exception as e:  # noqa: BLE001 - a client gone mid-call; the mux is dropped either way
            self.muxes.pop(mux.id, None)
            log.info("mux %s dropped: %s", mux.id, e)


class SharedEnd:
    """The end (the final flag alone) of a Triton request that carried several requests of a mux:
    sent once the last of them ends; each member ends once (`member()`)."""

    def __init__(self, send_end: Callable[[], Awaitable[None]], members: int):
        self._send_end = send_end
        self._left = members

    def member(self) -> Callable[[], Awaitable[None]]:
        ended = False

        async def end() -> None:
            nonlocal ended
            if ended:
                return
            ended, self._left = True, self._left - 1
            if self._left == 0:
                await self._send_end()

        return end


def member_send(mux: Mux, request_id: str, send_end: Callable[[], Awaitable[None]]):
    """A muxed request's Send (engines.serving.Send): deltas in the mux's batches; after the final
    one, the request ends (the final flag alone). If the mux fails, the request fails."""
    mux.join(request_id)

    async def send(delta: EngineDelta, final: bool) -> None:
        try:
            await mux.add(MuxDelta.of(request_id, delta))
        except BaseException:
            mux.leave(request_id)
            raise
        if final:
            mux.leave(request_id)
            await send_end()

    return send


def member_send_error(mux: Mux, request_id: str, send_end: Callable[[], Awaitable[None]]):
    """A muxed request's SendError: its error in the mux's batch, then its end."""

    async def send_error(message: str) -> None:
        mux.join(request_id)  # a request refused before it ran has not joined
        try:
            await mux.add(MuxError(request_id, message))
        finally:
            mux.leave(request_id)
            await send_end()

    return send_error


def member_is_cancelled(mux: Mux, request_id: str) -> IsCancelled:
    """A muxed request's IsCancelled: a look at the mux, no call to Triton."""

    async def is_cancelled() -> bool:
        return mux.member_cancelled(request_id)

    return is_cancelled
