"""KvIndex RPCs: proto ↔ the index and the ingestor's figures."""

from __future__ import annotations

import time

import numpy as np
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from kvmesh import worker_ids
from kvmesh.block_index import BlockIndex
from kvmesh.errors import InvalidArgument, Unavailable
from kvmesh.v1 import kvindex_pb2, kvindex_pb2_grpc
from services.kvindex.ingest import Ingestor
from services.kvindex.subscription import LAG_WINDOW_S


class KvIndexServicer(kvindex_pb2_grpc.KvIndexServicer):
    def __init__(self, index: BlockIndex, ingestor: Ingestor, max_match_blocks: int):
        self.index = index
        self.ingestor = ingestor
        self.max_match_blocks = max_match_blocks
        self._rate_mark = (time.monotonic(), 0)

    async def Match(self, message, context):
        if len(message.block_hashes) > self.max_match_blocks:
            raise InvalidArgument(
                f"block_hashes: {len(message.block_hashes)} blocks, at most {self.max_match_blocks}",
                param="block_hashes",
            )
        overlaps = await _redis(self.index.match(list(message.block_hashes)))
        return kvindex_pb2.MatchResponse(
            overlaps=[
                kvindex_pb2.WorkerOverlap(worker_id=w, blocks=n)
                for w, n in sorted(overlaps.items(), key=lambda item: (-item[1], item[0]))
            ]
        )

    async def Stats(self, message, context):
        subscriptions = sorted(self.ingestor.subscriptions.values(), key=lambda s: s.worker_id)
        since = time.time() - LAG_WINDOW_S
        for s in subscriptions:  # a worker that published nothing lately kept its old lags
            s.stats.forget_lags_before(since)
        lags = [lag for s in subscriptions for _, lag in s.stats.lags_ms]
        return kvindex_pb2.StatsResponse(
            workers=[
                kvindex_pb2.WorkerIndexStats(
                    worker_id=s.worker_id,
                    blocks=len(s.blocks),
                    events=s.stats.events,
                    last_seq=max(s.stats.last_seq, 0),
                    resyncs=s.stats.resyncs,
                )
                for s in subscriptions
            ],
            events_per_second=self._events_per_second(sum(s.stats.events for s in subscriptions)),
            lag_ms_p50=float(np.percentile(lags, 50)) if lags else 0.0,
            lag_ms_p99=float(np.percentile(lags, 99)) if lags else 0.0,
        )

    def _events_per_second(self, total: int) -> float:
        """Since the previous Stats call."""
        now = time.monotonic()
        then, before = self._rate_mark
        self._rate_mark = (now, total)
        return max(total - before, 0) / max(now - then, 1e-9)

    async def Purge(self, message, context):
        if not worker_ids.valid(message.worker_id):
            raise InvalidArgument(
                f"worker_id: {message.worker_id!r} is not a worker id ({worker_ids.RULE})", param="worker_id"
            )
        removed = await _redis(self.index.purge(message.worker_id))
        return kvindex_pb2.PurgeResponse(blocks_removed=removed)


async def _redis(call):
    try:
        return await call
    except (RedisConnectionError, RedisTimeoutError) as e:
        raise Unavailable(f"the index's Redis is unreachable: {e}") from None
