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
from kvmesh.block_index import BlockIndex
from kvmesh.kv_events import BadMessage, EventBatch, decode
from kvmesh.v1 import worker_pb2
from services.kvindex.translate import WorkerBlocks

log = logging.getLogger(__name__)
REPLAY_TIMEOUT_S = 2.0


@dataclass
class WorkerStats:
    events: int = 0
    batches: int = 0
    last_seq: int = -1
    resyncs: int = 0
    bad_messages: int = 0
    dropped_blocks: int = 0
    # Event time (engine clock) → visible in Redis, ms, recent batches.
    lags_ms: deque = field(default_factory=lambda: deque(maxlen=4096))


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
            while True:
                await self.handle(await sub.recv_multipart())
        finally:
            sub.close()

    async def handle(self, frames: list[bytes]) -> None:
        try:
            seq, batch = decode(frames)
        except BadMessage as e:
            self.stats.bad_messages += 1
            log.warning("worker %s: dropped a bad KV-event message: %s", self.worker_id, e)
            return
        expected = self.stats.last_seq + 1
        if seq < expected and seq != 0:
            return  # already applied (replayed earlier)
        if seq != expected:
            await self._resync(expected, seq)
        await self._apply(seq, batch)

    async def _apply(self, seq: int, batch: EventBatch) -> None:
        translation = self.blocks.translate(batch)
        if translation.cleared:
            await self.index.purge(self.worker_id)
        await self.index.apply(self.worker_id, translation.changes)
        self.stats.lags_ms.append(max(time.time() - batch.ts, 0.0) * 1000)
        self.stats.events += len(batch.events)
        self.stats.batches += 1
        self.stats.dropped_blocks += translation.dropped
        self.stats.last_seq = seq

    async def _resync(self, expected: int, seq: int) -> None:
        """Makes the index whole up to (not including) `seq`."""
        self.stats.resyncs += 1
        missed = await self._replay(expected, seq) if seq > expected else None
        if missed is not None:
            log.info("worker %s: replayed KV-event batches %d..%d", self.worker_id, expected, seq - 1)
            for replayed_seq, batch in missed:
                await self._apply(replayed_seq, batch)
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

    async def _replay(self, start: int, stop: int) -> list[tuple[int, EventBatch]] | None:
        """Batches start..stop-1 from the replay endpoint, or None if it cannot give them all."""
        if not self.record.kv_events_replay_endpoint:
            return None
        dealer = self.ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(self.record.kv_events_replay_endpoint)
        got: list[tuple[int, EventBatch]] = []
        try:
            await dealer.send_multipart([b"", start.to_bytes(8, "big")])
            while True:
                frames = await asyncio.wait_for(dealer.recv_multipart(), REPLAY_TIMEOUT_S)
                if len(frames) == 4 and frames[2] == kv_events.END_SEQ:
                    break
                replayed_seq, batch = decode(frames[1:])
                if replayed_seq < stop:
                    got.append((replayed_seq, batch))
        except (TimeoutError, BadMessage) as e:
            log.warning("worker %s: replay failed: %s", self.worker_id, e)
            return None
        finally:
            dealer.close()
        return got if [s for s, _ in got] == list(range(start, stop)) else None
