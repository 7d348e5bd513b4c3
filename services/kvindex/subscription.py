"""One worker's KV-event stream → the index: decode, translate, apply; gaps are resynced.

Resync: ask the worker's replay endpoint for the missed batches; if it cannot give all of them
(no endpoint, timeout, buffer too short, publisher restarted), drop the worker's blocks from the
index and start over from what arrives next. The index may then under-report (fewer cache hits)
but never claims a block the worker does not hold.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field

import zmq
import zmq.asyncio

from kvmesh import kv_events
from kvmesh.block_index import BlockIndex, BlockRun
from kvmesh.kv_events import BadMessage, decode
from kvmesh.v1 import worker_pb2
from services.kvindex.translate import WorkerBlocks

log = logging.getLogger(__name__)
REPLAY_TIMEOUT_S = 2.0
MAX_COALESCED = 64


@dataclass
class WorkerStats:
    # Block events: each block stored or removed counts one (AllBlocksCleared one).
    events: int = 0
    batches: int = 0
    last_seq: int = -1
    resyncs: int = 0
    bad_messages: int = 0
    dropped_blocks: int = 0
    # (applied at, ms from the event's time (engine clock) to visible in Redis), recent batches.
    lags_ms: deque = field(default_factory=lambda: deque(maxlen=100_000))


class Subscription:
    def __init__(self, ctx: zmq.asyncio.Context, record: worker_pb2.WorkerRecord, index: BlockIndex):
        self.ctx = ctx
        self.record = record
        self.index = index
        self.blocks = WorkerBlocks(identity=record.model)
        self.stats = WorkerStats()

    @property
    def worker_id(self) -> str:
        return self.record.id

    async def run(self) -> None:
        sub = self.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
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

    async def handle(self, *messages: list[bytes], replayed: bool = False) -> None:
        """Applies messages in order; consecutive ones in one Redis call. The lag statistics count
        live messages only: a replayed one is as old as the outage that made it needed."""
        pending: list[BlockRun] = []
        stamps: list[float] = []
        for frames in messages:
            try:
                seq, batch = decode(frames)
            except BadMessage as e:
                self.stats.bad_messages += 1
                log.warning("worker %s: dropped a bad KV-event message: %s", self.worker_id, e)
                continue
            expected = self.stats.last_seq + 1
            if seq < expected and seq != 0:
                continue  # already applied (replayed earlier)
            if seq != expected:
                await self._flush(pending, stamps)
                await self._resync(expected, seq)
            translation = self.blocks.translate(batch)
            if translation.cleared:
                await self._flush(pending, stamps)
                await self.index.purge(self.worker_id)
            pending += translation.runs
            if not replayed:
                stamps.append(batch.ts)
            self.stats.events += sum(len(getattr(e, "block_hashes", ())) or 1 for e in batch.events)
            self.stats.batches += 1
            self.stats.dropped_blocks += translation.dropped
            self.stats.last_seq = seq
        await self._flush(pending, stamps)

    async def _flush(self, runs: list[BlockRun], stamps: list[float]) -> None:
        await self.index.apply(self.worker_id, runs)
        now = time.time()
        self.stats.lags_ms.extend((now, max(now - ts, 0.0) * 1000) for ts in stamps)
        runs.clear()
        stamps.clear()

    async def _resync(self, expected: int, seq: int) -> None:
        """Makes the index whole up to (not including) `seq`."""
        self.stats.resyncs += 1
        missed = await self._replay(expected, seq) if seq > expected else None
        if missed is not None:
            log.info("worker %s: replayed KV-event batches %d..%d", self.worker_id, expected, seq - 1)
            await self.handle(*missed, replayed=True)
            return
        log.warning(
            "worker %s: KV events %d..%d lost (got %d); clearing its index entries",
            self.worker_id,
            expected,
            seq - 1,
            seq,
        )
        self.blocks.clear()
        await self.index.purge(self.worker_id)

    async def catch_up(self) -> None:
        """Applies what the worker published before we subscribed, from its replay buffer."""
        buffered = await self._fetch(0)
        if not buffered:
            return
        first = int.from_bytes(buffered[0][1], "big")
        if first > 0:  # the buffer no longer reaches the start: those blocks stay unknown
            self.stats.resyncs += 1
        self.stats.last_seq = first - 1
        await self.handle(*buffered, replayed=True)

    async def _replay(self, start: int, stop: int) -> list[list[bytes]] | None:
        """Messages start..stop-1 from the replay endpoint, or None if it cannot give them all."""
        got = [frames for frames in await self._fetch(start) or [] if int.from_bytes(frames[1], "big") < stop]
        seqs = [int.from_bytes(frames[1], "big") for frames in got]
        return got if seqs == list(range(start, stop)) else None

    async def _fetch(self, start: int) -> list[list[bytes]] | None:
        """Every buffered message from `start` on ([topic, seq, payload] each); None if the
        worker has no replay endpoint or it does not answer."""
        if not self.record.kv_events_replay_endpoint:
            return None
        dealer = self.ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(self.record.kv_events_replay_endpoint)
        got: list[list[bytes]] = []
        try:
            await dealer.send_multipart([b"", start.to_bytes(8, "big")])
            while True:
                frames = await asyncio.wait_for(dealer.recv_multipart(), REPLAY_TIMEOUT_S)
                if len(frames) == 4 and frames[2] == kv_events.END_SEQ:
                    return got
                if len(frames) != 4 or len(frames[2]) != 8:
                    raise BadMessage(f"replay answer with {len(frames)} frames")
                got.append(frames[1:])
        except (TimeoutError, BadMessage) as e:
            log.warning("worker %s: replay failed: %s", self.worker_id, e)
            return None
        finally:
            dealer.close()
