"""One worker's KV-event stream → the index: decode, translate, apply; gaps are resynced.

Resync: ask the worker's replay endpoint for the missed batches; if it cannot give all of them
(no endpoint, timeout, buffer too short, publisher restarted), drop the worker's blocks from the
index and start over from what arrives next. The index may then under-report (fewer cache hits)
but never claims a block the worker does not hold.

Malformed input is counted (metrics.py) and dropped, within `Limits`: a message without a readable
sequence number is skipped (if it mattered, the next one shows a gap); one that jumps more than
`max_seq_gap` from the expected number, either way, is skipped unless the next one follows it (the
publisher did jump: a restart, or a long partition), and then the worker's blocks are dropped, never
replayed; a message whose payload cannot be used (undecodable, more than `max_batch_blocks` blocks)
is lost content, so the worker's blocks are dropped. Replays are read and applied a chunk at a time,
at most `max_seq_gap` messages of at most `max_message_bytes` (ZMQ disconnects a publisher that
sends a bigger one).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

import zmq
import zmq.asyncio

from kvmesh import kv_events
from kvmesh.block_index import BlockIndex, BlockRun
from kvmesh.kv_events import BadMessage
from kvmesh.v1 import worker_pb2
from services.kvindex.metrics import DROPPED_EVENTS, DROPPED_MESSAGES, EVENTS, INDEX_BLOCKS, INGESTION_LAG
from services.kvindex.translate import WorkerBlocks

log = logging.getLogger(__name__)
REPLAY_TIMEOUT_S = 2.0
MAX_COALESCED = 64
# Stats' lag percentiles cover the batches applied in this window.
LAG_WINDOW_S = 10.0


@dataclass(frozen=True)
class Limits:
    """What one worker's stream may make kvindex hold or do (flags: config.py)."""

    max_block_size: int
    max_batch_blocks: int
    max_message_bytes: int
    max_seq_gap: int
    max_worker_blocks: int


@dataclass
class WorkerStats:
    # Block events: each block stored or removed counts one (AllBlocksCleared one).
    events: int = 0
    batches: int = 0
    last_seq: int = -1
    resyncs: int = 0
    bad_messages: int = 0
    dropped_blocks: int = 0
    # (applied at, ms from the event's time (engine clock) to visible in Redis), the batches of
    # the last LAG_WINDOW_S (older ones go as new ones come: a 20,000-request soak grew kvindex
    # by 4 MB when they went only at Stats calls).
    lags_ms: deque = field(default_factory=lambda: deque(maxlen=100_000))

    def add_lags(self, now: float, stamps: list[float]) -> None:
        self.lags_ms.extend((now, max(now - ts, 0.0) * 1000) for ts in stamps)
        self.forget_lags_before(now - LAG_WINDOW_S)

    def forget_lags_before(self, since: float) -> None:
        while self.lags_ms and self.lags_ms[0][0] < since:  # oldest first
            self.lags_ms.popleft()


class Subscription:
    def __init__(self, ctx: zmq.asyncio.Context, record: worker_pb2.WorkerRecord, index: BlockIndex, limits: Limits):
        self.ctx = ctx
        self.record = record
        self.index = index
        self.limits = limits
        self.blocks = WorkerBlocks(record.model, limits.max_block_size, limits.max_worker_blocks)
        self.stats = WorkerStats()
        self._jumped: int | None = None  # the last message skipped for a jump, if the one before it
        self._logged: set[str] = set()  # reasons already logged: a broken publisher must not flood the log

    @property
    def worker_id(self) -> str:
        return self.record.id

    async def run(self) -> None:
        sub = self._socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(self.record.kv_events_endpoint)
        try:
            # Whatever the index holds for this worker predates us: start clean, replay from 0.
            await self.index.purge(self.worker_id)
            await self.catch_up()
            # Whatever else already arrived is read without asyncio's machinery (a plain socket
            # over the same one) and goes into the same Redis call.
            waiting = zmq.Socket.shadow(sub.underlying)
            while True:
                messages = [await sub.recv_multipart()]
                while len(messages) < MAX_COALESCED:
                    try:
                        messages.append(waiting.recv_multipart(zmq.NOBLOCK))
                    except zmq.Again:
                        break
                await self.handle(*messages)
        finally:
            sub.close()

    def _socket(self, kind: int) -> zmq.asyncio.Socket:
        socket = self.ctx.socket(kind)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.MAXMSGSIZE, self.limits.max_message_bytes)
        return socket

    async def handle(self, *messages: list[bytes], replayed: bool = False) -> None:
        """Applies messages in order; consecutive ones in one Redis call (up to max_batch_blocks
        blocks). The lag statistics count live messages only: a replayed one is as old as the
        outage that made it needed."""
        pending: list[BlockRun] = []
        stamps: list[float] = []
        for frames in messages:
            try:
                seq = kv_events.sequence(frames)
            except BadMessage as e:
                self._bad(e)
                continue
            expected = self.stats.last_seq + 1
            # 0 is a restarted publisher; any other number that far off is believed only when the
            # next one follows it.
            jump = seq != 0 and abs(seq - expected) > self.limits.max_seq_gap
            if jump and seq - 1 != self._jumped:
                self._jumped = seq
                self._bad(BadMessage("seq_jump", f"sequence number {seq}, expected {expected}"))
                continue
            self._jumped = None
            if not jump and seq < expected and seq != 0:
                continue  # already applied (replayed earlier)
            if seq != expected:
                await self._flush(pending, stamps)
                await self._resync(expected, seq)
            self.stats.last_seq = seq
            try:
                batch = kv_events.decode_batch(frames[2], self.limits.max_batch_blocks)
            except BadMessage as e:
                self._bad(e)
                await self._flush(pending, stamps)
                await self._forget(f"KV-event batch {seq} unusable")
                continue
            translation = self.blocks.translate(batch)
            if translation.cleared:
                await self._flush(pending, stamps)
                await self.index.purge(self.worker_id)
            pending += translation.runs
            if not replayed:
                stamps.append(batch.ts)
            events = sum(len(getattr(e, "block_hashes", ())) or 1 for e in batch.events)
            self.stats.events += events
            EVENTS.labels(self.worker_id).inc(events)
            self.stats.batches += 1
            self.stats.dropped_blocks += translation.dropped
            for reason, n in translation.malformed.items():
                DROPPED_EVENTS.labels(reason).inc(n)
                self._log_once(reason, "dropped %d malformed BlockStored events (%s)", n, reason)
            if sum(len(run.seqs) for run in pending) >= self.limits.max_batch_blocks:
                await self._flush(pending, stamps)
        await self._flush(pending, stamps)

    def _bad(self, e: BadMessage) -> None:
        self.stats.bad_messages += 1
        DROPPED_MESSAGES.labels(e.reason).inc()
        self._log_once(e.reason, "dropped a bad KV-event message: %s", e)

    def _log_once(self, reason: str, message: str, *args) -> None:
        level = logging.DEBUG if reason in self._logged else logging.WARNING
        self._logged.add(reason)
        log.log(level, "worker %s: " + message, self.worker_id, *args)

    async def _flush(self, runs: list[BlockRun], stamps: list[float]) -> None:
        await self.index.apply(self.worker_id, runs)
        now = time.time()
        self.stats.add_lags(now, stamps)
        for stamp in stamps:
            INGESTION_LAG.observe(max(now - stamp, 0.0))
        INDEX_BLOCKS.labels(self.worker_id).set(len(self.blocks))
        runs.clear()
        stamps.clear()

    async def _resync(self, expected: int, seq: int) -> None:
        """Makes the index whole up to (not including) `seq`."""
        self.stats.resyncs += 1
        if 0 < seq - expected <= self.limits.max_seq_gap and await self._replay(expected, seq):
            log.info("worker %s: replayed KV-event batches %d..%d", self.worker_id, expected, seq - 1)
            return
        await self._forget(f"KV events {expected}..{seq - 1} lost (got {seq})")

    async def _forget(self, why: str) -> None:
        if not self.blocks.in_index:
            return  # the index holds nothing of the worker: spare Redis the scan (a broken stream repeats)
        log.warning("worker %s: %s; clearing its index entries", self.worker_id, why)
        self.blocks.clear()
        INDEX_BLOCKS.labels(self.worker_id).set(0)
        await self.index.purge(self.worker_id)

    async def catch_up(self) -> None:
        """Applies what the worker published before we subscribed, from its replay buffer."""
        async with aclosing(self._fetch(0, self.limits.max_seq_gap)) as chunks:
            async for chunk in chunks:
                if self.stats.last_seq < 0:
                    first = int.from_bytes(chunk[0][1], "big")
                    if 0 < first <= kv_events.MAX_SEQ:  # the buffer no longer reaches the start
                        self.stats.resyncs += 1
                        self.stats.last_seq = first - 1
                await self.handle(*chunk, replayed=True)

    async def _replay(self, start: int, stop: int) -> bool:
        """Applies messages start..stop-1 from the replay endpoint as they come; False if it cannot
        give them all (the caller then drops the worker's blocks, these with them)."""
        following = start
        async with aclosing(self._fetch(start, stop - start)) as chunks:
            async for chunk in chunks:
                for frames in chunk:
                    if int.from_bytes(frames[1], "big") != following:
                        return False
                    following += 1
                await self.handle(*chunk, replayed=True)
        return following == stop

    async def _fetch(self, start: int, most: int) -> AsyncIterator[list[list[bytes]]]:
        """The buffered messages from `start` on ([topic, seq, payload] each), up to `most` of
        them, in chunks of MAX_COALESCED; they end early if the worker has no replay endpoint, or
        it stops answering or answers out of shape."""
        if not self.record.kv_events_replay_endpoint:
            return
        dealer = self._socket(zmq.DEALER)
        dealer.connect(self.record.kv_events_replay_endpoint)
        chunk: list[list[bytes]] = []
        try:
            await dealer.send_multipart([b"", start.to_bytes(8, "big")])
            while most > 0:
                frames = await asyncio.wait_for(dealer.recv_multipart(), REPLAY_TIMEOUT_S)
                if len(frames) == 4 and frames[2] == kv_events.END_SEQ:
                    break
                if len(frames) != 4 or len(frames[2]) != 8:
                    raise BadMessage("frames", f"replay answer with {len(frames)} frames")
                chunk.append(frames[1:])
                most -= 1
                if len(chunk) == MAX_COALESCED:
                    yield chunk
                    chunk = []
        except (TimeoutError, BadMessage) as e:
            log.warning("worker %s: replay failed: %s", self.worker_id, e)
        finally:
            dealer.close()
        if chunk:
            yield chunk
