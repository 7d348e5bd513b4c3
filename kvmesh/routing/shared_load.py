"""In-flight load in Redis (shared_load.lua), so that every router replica sees the same load.

Semantics equal InFlight's (the local fallback): a routed request counts its uncached blocks as
prefill load until MarkPrefilled, then all its blocks as decode load until Release; a lease frees
requests whose gateway vanished.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from importlib import resources
from itertools import repeat

from kvmesh.load_keys import KEYS
from kvmesh.redis_batch import Coalescer
from kvmesh.routing.framework.types import WorkerLoad

LIBRARY = resources.files("kvmesh.routing").joinpath("shared_load.lua").read_text()
# A function call: (name, arguments).
Op = tuple[str, tuple]


class SharedLoad:
    def __init__(self, calls: Coalescer, lease_s: float):
        """`calls`: the router's batched Redis calls, whose libraries include LIBRARY."""
        self.calls = calls
        self.lease_s = lease_s

    async def apply(self, ops: list[Op]) -> list[int]:
        """Runs `ops` in order in one round trip (with whatever else the router sends then)."""
        return await self.calls.execute([("FCALL", name, len(KEYS), *KEYS, *args) for name, args in ops])

    def add_op(self, request_id: str, worker_id: str, prefill_blocks: int, total_blocks: int) -> Op:
        now = _now_ms()
        deadline = now + int(self.lease_s * 1000)
        return "kvmesh_load_add", (request_id, worker_id, prefill_blocks, total_blocks, deadline, now)

    @staticmethod
    def prefilled_op(request_id: str) -> Op:
        return "kvmesh_load_prefilled", (request_id, _now_ms())

    @staticmethod
    def release_op(request_id: str) -> Op:
        return "kvmesh_load_release", (request_id, _now_ms())

    async def add(self, request_id: str, worker_id: str, prefill_blocks: int, total_blocks: int) -> None:
        await self.apply([self.add_op(request_id, worker_id, prefill_blocks, total_blocks)])

    async def mark_prefilled(self, request_id: str) -> bool:
        return bool((await self.apply([self.prefilled_op(request_id)]))[0])

    async def release(self, request_id: str) -> bool:
        return bool((await self.apply([self.release_op(request_id)]))[0])

    async def loads(self) -> LoadTable:
        return LoadTable.of_reply((await self.calls.execute([load_command()]))[0])


def load_command() -> tuple:
    return ("HGETALL", KEYS[0])


class LoadTable:
    """The shared load as Redis returned it (HGETALL), read per worker: a decision asks only for
    its live workers, so the fields of workers long gone are never parsed."""

    def __init__(self, raw: dict[bytes, bytes]):
        self.raw = raw

    @classmethod
    def of_reply(cls, flat: list[bytes]) -> LoadTable:
        """From HGETALL's reply on the wire: field, value, field, value..."""
        fields = iter(flat)
        return cls(dict(zip(fields, fields, strict=True)))

    def __getitem__(self, worker_id: str) -> WorkerLoad:
        return self.loads(load_fields([worker_id]))[0]

    def loads(self, fields: tuple[bytes, ...]) -> list[WorkerLoad]:
        """The loads of the workers whose `load_fields` these are, in their order: the counts
        looked up and parsed in C, one pass over every worker of a decision."""
        counts = list(map(int, map(self.raw.get, fields, repeat(b"0"))))
        if min(counts, default=0) < 0:  # a release that outran its add (writes lost with Redis)
            counts = [max(count, 0) for count in counts]
        each = iter(counts)
        return [WorkerLoad(n, p, d) for n, p, d in zip(each, each, each, strict=True)]


def load_fields(worker_ids: Iterable[str]) -> tuple[bytes, ...]:
    """The workers' fields in the load hash: requests, prefill blocks and decode blocks, in turn."""
    return tuple(worker.encode() + suffix for worker in worker_ids for suffix in (b":n", b":p", b":d"))


def _now_ms() -> int:
    return int(time.time() * 1000)
