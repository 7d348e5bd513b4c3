"""Fair admission: when every worker is full, a request waits its turn at the gateway instead of failing.

A request whose first attempt finds the mesh full (`AtCapacity`: the router's capacity filter left
no worker) joins the queue of its priority; while anything is queued, new arrivals join too, so none
overtakes. One turn at a time, the queue's head is tried again: when a request ends at this gateway
(`released()`), and every `retry_interval_s`, since other gateways free slots this one does not see.
A head that gets a worker hands the turn to the next at once; one that finds the mesh still full
keeps its place and the queue waits for the next release or tick.

Order: the highest priority with anything queued goes first, strictly (a saturating high-priority
load starves the lower ones). Within a priority, keys share the mesh by cost (tokens) through
start-time fair queuing (Goyal, Vin and Cheng, 1996), computed lazily: each key's oldest request
starts at max(V, the key's finish tag); the smallest start goes next (the older on a tie), V becomes
its start and its key's finish tag that start plus its cost. A key that was served more tokens waits
behind one served fewer, so two backlogged keys get equal tokens whatever their request rates, and a
key arriving while another has a long backlog starts at V: it waits about one turn, not the backlog.
Within a key, first in, first out. Fairness is per gateway; gateway replicas do not share a queue.

Bounds: at most `max_queued` requests per priority (more: 429 naming --max-queued), each waiting at
most `timeout_s` for its turn (then 429 naming --queue-timeout-s). A waiter that is cancelled (its
client went away) or whose attempt fails otherwise leaves the queue and passes the turn on.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TypeVar

from opentelemetry import trace

from kvmesh import telemetry
from kvmesh.api_keys import PRIORITIES, Priority
from kvmesh.errors import AtCapacity, ResourceExhausted
from services.gateway import metrics

TRACER = trace.get_tracer("kvmesh.gateway")

T = TypeVar("T")
# The queue cannot know when a slot frees; a second is many turns of a busy mesh and short for a person.
RETRY_AFTER = {"Retry-After": "1"}


@dataclass(eq=False)
class _Waiter:
    key: str
    cost: int
    seq: int
    turn: asyncio.Future[None]  # done: this waiter may try now


@dataclass
class _Lane:
    """One priority's queue: a FIFO per key and the fair-queuing tags."""

    fifo: dict[str, deque[_Waiter]] = field(default_factory=dict)
    finish: dict[str, float] = field(default_factory=dict)
    now: float = 0.0  # V: the start tag of the request admitted last
    depth: int = 0

    def push(self, w: _Waiter) -> None:
        self.fifo.setdefault(w.key, deque()).append(w)
        self.depth += 1

    def _start(self, key: str) -> float:
        return max(self.now, self.finish.get(key, 0.0))

    def head(self) -> _Waiter | None:
        return min((q[0] for q in self.fifo.values()), key=lambda w: (self._start(w.key), w.seq), default=None)

    def charge(self, w: _Waiter) -> None:
        """`w` (its key's head) got a worker: V and its key's finish tag move on."""
        self.now = start = self._start(w.key)
        self.finish[w.key] = start + w.cost
        # A key that has nothing queued and no tokens ahead of V is the same as one never seen.
        for key in [k for k, f in self.finish.items() if f <= self.now and k not in self.fifo]:
            del self.finish[key]

    def remove(self, w: _Waiter) -> bool:
        q = self.fifo.get(w.key)
        if q is None or w not in q:
            return False
        q.remove(w)
        if not q:
            del self.fifo[w.key]
        self.depth -= 1
        return True


class Admission:
    def __init__(self, max_queued: int, timeout_s: float, retry_interval_s: float = 0.05):
        if max_queued < 0:
            raise ValueError(f"max_queued must be ≥ 0, not {max_queued}")
        if timeout_s <= 0 or retry_interval_s <= 0:
            raise ValueError(f"timeout_s and retry_interval_s must be > 0, not {timeout_s} and {retry_interval_s}")
        self.max_queued, self.timeout_s, self.retry_interval_s = max_queued, timeout_s, retry_interval_s
        self._lanes = {p: _Lane() for p in PRIORITIES}  # in the order they are served
        self._seq = itertools.count()
        self._wake = asyncio.Event()  # a slot may have freed
        self._server: asyncio.Task | None = None  # hands out turns while anything is queued
        self._holder: _Waiter | None = None  # the waiter whose turn it is
        self._turn_over: asyncio.Future[bool] | None = None  # True: move on at once; False: the mesh is full

    def queued(self, priority: Priority | None = None) -> int:
        return self._lanes[priority].depth if priority else sum(lane.depth for lane in self._lanes.values())

    def released(self) -> None:
        """A request ended at this gateway: a slot may be free."""
        self._wake.set()

    async def run(
        self, key: str, priority: Priority, cost: int, attempt: Callable[[], Awaitable[T]]
    ) -> tuple[T, float]:
        """`attempt()`'s result and the seconds spent queued (0.0 when it did not queue). Errors
        from `attempt()` other than AtCapacity reach the caller; a full queue or a wait over
        `timeout_s` raises ResourceExhausted."""
        if priority not in self._lanes:
            raise ValueError(f"priority {priority!r}: one of {', '.join(PRIORITIES)}")
        if cost < 0:
            raise ValueError(f"cost must be ≥ 0, not {cost}")
        if not self.queued():
            with suppress(AtCapacity):
                result = await attempt()
                metrics.QUEUE_SECONDS.labels(priority).observe(0.0)
                return result, 0.0
        return await self._queue(key, priority, cost, attempt)

    async def _queue(self, key: str, priority: Priority, cost: int, attempt: Callable[[], Awaitable[T]]):
        lane = self._lanes[priority]
        if lane.depth >= self.max_queued:
            metrics.QUEUE_REJECTIONS.labels(priority, "full").inc()
            raise ResourceExhausted(
                f"every worker is busy and {lane.depth} {priority}-priority requests are waiting, the most this "
                f"gateway queues (--max-queued); retry later",
                headers=RETRY_AFTER,
            )
        loop = asyncio.get_running_loop()
        w = _Waiter(key, cost, next(self._seq), loop.create_future())
        lane.push(w)
        metrics.QUEUED.labels(priority).inc()
        since = loop.time()
        if self._server is None:
            self._server = asyncio.create_task(self._serve())
        queued = {"kvmesh.priority": priority, "kvmesh.queue_depth": lane.depth}
        with telemetry.ending(telemetry.start_span(TRACER, "kvmesh.queue", attributes=queued)) as span:
            try:
                return await self._wait_and_attempt(w, lane, priority, since, attempt, span)
            finally:
                if lane.remove(w):
                    metrics.QUEUED.labels(priority).dec()
                self._pass_turn(w, move_on=True)

    async def _wait_and_attempt(self, w: _Waiter, lane: _Lane, priority: Priority, since: float, attempt, span):
        """`w`'s turns until its attempt gets a worker: (the result, the seconds it waited)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with asyncio.timeout_at(since + self.timeout_s):
                    await w.turn
            except TimeoutError:
                metrics.QUEUE_REJECTIONS.labels(priority, "timeout").inc()
                raise ResourceExhausted(
                    f"no worker freed up within {self.timeout_s:g}s in the queue (--queue-timeout-s); retry later",
                    headers=RETRY_AFTER,
                ) from None
            try:
                result = await attempt()
            except AtCapacity:
                w.turn = loop.create_future()
                self._pass_turn(w, move_on=False)
                continue
            waited = loop.time() - since
            lane.charge(w)
            metrics.QUEUE_SECONDS.labels(priority).observe(waited)
            span.set_attribute("kvmesh.queued_ms", waited * 1000)
            return result, waited

    def _pass_turn(self, w: _Waiter, move_on: bool) -> None:
        if self._holder is w and self._turn_over is not None and not self._turn_over.done():
            self._turn_over.set_result(move_on)

    def _head(self) -> _Waiter | None:
        return next((h for lane in self._lanes.values() if (h := lane.head()) is not None), None)

    async def _serve(self) -> None:
        """Turns, one at a time, until nothing is queued."""
        loop = asyncio.get_running_loop()
        try:
            while (w := self._head()) is not None:
                if w.turn.done():  # its waiter was cancelled or timed out: its `finally` takes it out next
                    await asyncio.sleep(0)
                    continue
                # A release from here on (even during the attempt) means: try again at once.
                self._wake.clear()
                self._holder, self._turn_over = w, loop.create_future()
                w.turn.set_result(None)
                move_on = await self._turn_over
                self._holder = self._turn_over = None
                if not move_on:
                    with suppress(TimeoutError):
                        async with asyncio.timeout(self.retry_interval_s):
                            await self._wake.wait()
        finally:
            self._server = None
