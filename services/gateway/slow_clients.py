"""A streamed answer's writes have a deadline. A client that stops reading keeps its connection
open while the transport's buffers fill; then every write waits for it. Without a deadline its
request would hold the engine and the router's slot until it read again or the router's lease ran
out. With one, a write that waits longer than --stream-write-timeout-s ends the request at once
(its chunks are closed: the engine aborts it, the router frees the slot) and the stream after it.

What a stopped client holds until then is the transports' buffers, not the gateway's: the gateway
keeps no queue of its own, only the one message being written (README.md, slow clients).
The HTTP front's writes are timed in openai/sse_response.py; the gRPC front's here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import TypeVar

from kvmesh.errors import DeadlineExceeded
from services.gateway import metrics

DEFAULT_WRITE_TIMEOUT_S = 30.0

log = logging.getLogger(__name__)
T = TypeVar("T")


class SlowClient(DeadlineExceeded):
    """The client of a streamed answer read nothing for the write timeout."""


def cut_off(front: str, request_id: str, timeout_s: float) -> SlowClient:
    """Counts and logs a client cut off for not reading; the error its stream ends with."""
    metrics.REQUESTS.labels(front, "slow_client").inc()
    log.warning("request %s: the client read nothing for %gs; cancelled", request_id, timeout_s)
    return SlowClient(f"the client read nothing for {timeout_s:g}s: the request was cancelled")


class WriteWatch:
    """Whether a stream's write in progress has waited `timeout_s` (then `on_late`, once), on one
    timer per stream that re-arms itself at most once a timeout: a timer per write would cost more
    than the write (uvloop: ~8 µs to make and cancel one)."""

    def __init__(self, timeout_s: float, on_late: Callable[[], None]):
        self._loop = asyncio.get_running_loop()
        self.timeout_s = timeout_s
        self._on_late = on_late
        self._since: float | None = None  # when the write in progress began
        self.late = False
        self._timer = self._loop.call_later(timeout_s, self._check)

    def writing(self) -> None:
        self._since = self._loop.time()

    def written(self) -> None:
        self._since = None

    def close(self) -> None:
        self._timer.cancel()

    def _check(self) -> None:
        now = self._loop.time()
        if self._since is not None and now - self._since >= self.timeout_s:
            self.late = True
            self._on_late()
            return
        self._timer = self._loop.call_at((now if self._since is None else self._since) + self.timeout_s, self._check)


async def taken_in_time(
    source: AsyncGenerator[T, None], timeout_s: float, front: str, request_id: str
) -> AsyncIterator[T]:
    """`source`'s items, for a consumer that writes each before it asks for the next (a gRPC
    response stream): one not asked for within `timeout_s` of the last closes `source` then,
    from a task of its own, since the consumer may never come back; if it does, SlowClient."""
    closing: asyncio.Task | None = None
    cut: SlowClient | None = None

    def late() -> None:
        nonlocal closing, cut
        cut = cut_off(front, request_id, timeout_s)
        closing = asyncio.get_running_loop().create_task(_close(source, request_id))

    watch = WriteWatch(timeout_s, late)
    try:
        async for item in source:
            watch.writing()
            yield item
            watch.written()
            if closing is not None:
                break
    finally:
        watch.close()
        # The one closing `source`: two at once fail ("aclose(): asynchronous generator is already running").
        await (closing if closing is not None else source.aclose())
    if cut is not None:
        raise cut


async def _close(source: AsyncGenerator, request_id: str) -> None:
    try:
        await source.aclose()
    except Exception:  # noqa: BLE001 - nobody may be left to raise it to: the consumer may never return
        log.exception("request %s: ending it after its client stopped reading", request_id)
