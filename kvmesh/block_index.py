"""Client of the global KV block index in Redis (layout and functions in block_index.lua).

Every call is one Redis round trip: `match` one FCALL_RO per routing decision, `apply` one FCALL
per KV-event batch. On Redis Cluster each block key's hash tag is its prefix's root (first block's
sequence hash), so a match hits one slot; a batch spanning several roots would be split by root
(one call per slot) — on a single Redis, as here, it goes in one call.
"""

from __future__ import annotations

import binascii
import struct
from collections.abc import Collection, Sequence
from importlib import resources
from typing import NamedTuple

import redis.asyncio as aioredis

from kvmesh import redis_functions, worker_ids
from kvmesh.redis_batch import Coalescer

LIBRARY = resources.files("kvmesh").joinpath("block_index.lua").read_text()
PREFIX = "kvi"


def _hex(value: int) -> str:
    return f"{value:016x}"


def block_key(root: int, seq: int) -> str:
    return f"{PREFIX}:{{{_hex(root)}}}:{_hex(seq)}"


def reverse_key(root: int, worker_id: str) -> str:
    return f"{PREFIX}:{{{_hex(root)}}}:w:{worker_id}"


# Every reverse key, the root spelt out as 16 hex digits: "}:w:" can then only stand where the id
# begins, so a pattern never lets one worker's id reach into another's keys.
REVERSE_GLOB = reverse_key(0, "").replace("0" * 16, "[0-9a-f]" * 16)
_WORKER_AT = len(reverse_key(0, ""))


class BlockRun(NamedTuple):
    """Blocks of one prefix (its root) that a worker stored, or removed, in order."""

    stored: bool  # False: removed
    root: int
    seqs: list[int]


class BlockIndex:
    def __init__(self, client: aioredis.Redis):
        self.redis = client
        # Function calls in batches over a connection of their own (kvmesh/redis_batch.py): the
        # batches of several workers' events, and matches, ride together.
        self._calls = Coalescer(client, [LIBRARY])

    async def load_functions(self) -> None:
        await redis_functions.load(self.redis, [LIBRARY])

    def close(self) -> None:
        self._calls.wire.close()

    async def _fcall(self, read_only: bool, name: str, keys: Sequence[str], args: Sequence[str | int]):
        command = ("FCALL_RO" if read_only else "FCALL", name, len(keys), *keys, *args)
        return (await self._calls.execute([command]))[0]

    async def match(self, seq_hashes: Sequence[int]) -> dict[str, int]:
        """worker id → how many leading blocks of the request it holds (workers with none omitted)."""
        if not seq_hashes:
            return {}
        return parse_match(await self._fcall(True, "kvmesh_match", match_keys(seq_hashes), []))

    async def apply(self, worker_id: str, runs: Sequence[BlockRun]) -> int:
        """Applies one event batch for a worker, its runs in order; returns how many memberships
        changed. A run goes as its root's reverse key and its block keys (kvmesh_apply in
        block_index.lua): one key a block, built as bytes."""
        keys: list[str | bytes] = []
        args: list[str | int] = [worker_id]
        for run in runs:
            if run.seqs:
                keys.append(reverse_key(run.root, worker_id))
                keys += block_keys(run.root, run.seqs)
                args += ["+" if run.stored else "-", len(run.seqs)]
        if not keys:
            return 0
        return int(await self._fcall(False, "kvmesh_apply", keys, args))

    async def purge(self, worker_id: str, batch: int = 256) -> int:
        """Drops every block of a worker; returns how many it held. An id outside
        kvmesh.worker_ids' rule is refused (ValueError): no pattern is built from it."""
        worker_ids.check(worker_id)
        return sum((await self._purge(REVERSE_GLOB + worker_id, set(), batch)).values())

    async def purge_all_but(self, live: Collection[str], batch: int = 256) -> dict[str, int]:
        """Drops every block of every worker not in `live` (workers that died while no kvindex
        ran, whatever their id); returns the blocks each held. One SCAN over the reverse keys."""
        return await self._purge(REVERSE_GLOB + "*", {w.encode() for w in live}, batch)

    async def _purge(self, pattern: str, keep: set[bytes], batch: int) -> dict[str, int]:
        removed: dict[str, int] = {}
        pending: dict[bytes, list[bytes]] = {}

        async def flush(worker: bytes) -> None:
            name = worker.decode(errors="replace")
            gone = int(await self._fcall(False, "kvmesh_purge", pending.pop(worker), [worker]))
            removed[name] = removed.get(name, 0) + gone

        async for key in self.redis.scan_iter(match=pattern, count=1000):
            worker = _bytes(key)[_WORKER_AT:]
            if worker in keep:
                continue
            keys = pending.setdefault(worker, [])
            keys.append(_bytes(key))
            if len(keys) >= batch:
                await flush(worker)
        for worker in list(pending):
            await flush(worker)
        return removed


def match_keys(seq_hashes: Sequence[int]) -> list[bytes]:
    """`block_key` of every hash of a prompt, rooted at its first."""
    return block_keys(seq_hashes[0], seq_hashes)


def block_keys(root: int, seqs: Sequence[int]) -> list[bytes]:
    """`block_key(root, seq)` of every seq: built in one go and as bytes, because every routing
    decision and every KV-event batch builds (and redis-py encodes) many of them."""
    if not seqs:
        return []
    prefix = block_key(root, 0)[:-16].encode()
    # Every step runs in C: the seqs in hex, 16 digits apart by "|", each "|" turned into a space
    # and the prefix, split at the spaces (neither character is in a key).
    hexes = binascii.hexlify(struct.pack(f">{len(seqs)}Q", *seqs), b"|", 8)
    return (prefix + hexes).replace(b"|", b" " + prefix).split(b" ")


def parse_match(flat: list) -> dict[str, int]:
    return {_text(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()
