"""The candidates of one decision: live workers, each with its load and its KV overlap with the
request, read in ONE Redis round trip (the index match and the shared load, in the router's
batch of the moment: kvmesh/redis_batch.py).

Without Redis: no overlap, and this router's own in-flight counts as the load.
"""

from __future__ import annotations

import time
from typing import NamedTuple

from redis.exceptions import RedisError

from kvmesh import block_index
from kvmesh.redis_batch import Coalescer
from kvmesh.registry import LiveWorker, Watcher
from kvmesh.routing.accounting import Accounting
from kvmesh.routing.framework.types import Candidate, Request
from kvmesh.routing.shared_load import LoadTable, load_command, load_fields
from kvmesh.v1 import worker_pb2

EXPIRY_INTERVAL_S = 1.0


class WorkerTable(NamedTuple):
    """What a decision needs of the live workers, built once per registry read instead of once per
    decision: the Watcher replaces its dict when it reads the registry, so the dict is the version."""

    workers: dict[str, LiveWorker]
    ids: tuple[str, ...]
    records: tuple[worker_pb2.WorkerRecord, ...]
    block_sizes: tuple[int, ...]
    load_fields: tuple[bytes, ...]

    @classmethod
    def of(cls, workers: dict[str, LiveWorker]) -> WorkerTable:
        records = tuple(live.record for live in workers.values())
        return cls(workers, tuple(workers), records, tuple(r.kv_block_size for r in records), load_fields(workers))


class CandidateSource:
    def __init__(self, workers: Watcher, calls: Coalescer, accounting: Accounting):
        """`calls`: the router's batched Redis calls, whose libraries include block_index's."""
        self.workers = workers
        self.calls = calls
        self.accounting = accounting
        self._next_expiry = 0.0
        self._table = WorkerTable.of({})

    async def gather(self, request: Request) -> list[Candidate]:
        # Leases last minutes: a sweep a second is enough, and a sweep walks every request in flight.
        if (now := time.monotonic()) >= self._next_expiry:
            self._next_expiry = now + EXPIRY_INTERVAL_S
            self.accounting.local.expire(set(self.workers.workers))
        try:
            overlaps, loads = await self._read(request)
            self.accounting.health.ok()
        except (RedisError, OSError) as e:
            self.accounting.health.failed(e)
            overlaps, loads = {}, None
        # After the read: the table of the moment, for the moment's load table.
        table = self._worker_table()
        if loads is None:
            loads = [self.accounting.local.load(worker_id) for worker_id in table.ids]
        else:
            loads = loads.loads(table.load_fields)
        block_size = request.block_size
        return [
            Candidate(record, load, overlaps.get(worker_id, 0) if size == block_size else 0, worker_id)
            for worker_id, record, size, load in zip(table.ids, table.records, table.block_sizes, loads, strict=True)
        ]

    def _worker_table(self) -> WorkerTable:
        if self._table.workers is not self.workers.workers:
            self._table = WorkerTable.of(self.workers.workers)
        return self._table

    async def _read(self, request: Request) -> tuple[dict[str, int], LoadTable]:
        commands = [load_command()]
        if request.block_hashes:
            keys = block_index.match_keys(request.block_hashes)
            commands.append(("FCALL_RO", "kvmesh_match", len(keys), *keys))
        replies = await self.calls.execute(commands)
        overlaps = block_index.parse_match(replies[1]) if request.block_hashes else {}
        return overlaps, LoadTable.of_reply(replies[0])
