"""Client of the global KV block index in Redis (layout and functions in block_index.lua).

Every call is one Redis round trip: `match` one FCALL_RO per routing decision, `apply` one FCALL
per KV-event batch. On Redis Cluster each block key's hash tag is its prefix's root (first block's
sequence hash), so a match hits one slot; a batch spanning several roots would be split by root
(one call per slot) — on a single Redis, as here, it goes in one call.
"""

from __future__ import annotations

import binascii
import struct
from collections.abc import Sequence
from importlib import resources
from typing import NamedTuple

import redis.asyncio as aioredis

from kvmesh import redis_functions

LIBRARY = resources.files("kvmesh").joinpath("block_index.lua").read_text()
PREFIX = "kvi"


def _hex(value: int) -> str:
    return f"{value:016x}"


def block_key(root: int, seq: int) -> str:
    return f"{PREFIX}:{{{_hex(root)}}}:{_hex(seq)}"


def reverse_key(root: int, worker_id: str) -> str:
    return f"{PREFIX}:{{{_hex(root)}}}:w:{worker_id}"


class BlockRun(NamedTuple):
    """Blocks of one prefix (its root) that a worker stored, or removed, in order."""

    stored: bool  # False: removed
    root: int
    seqs: list[int]


class BlockIndex:
    def __init__(self, client: aioredis.Redis):
        self.redis = client

    async def load_functions(self) -> None:
        await redis_functions.load(self.redis, [LIBRARY])

    async def _fcall(self, read_only: bool, name: str, keys: Sequence[str], args: Sequence[str | int]):
        fcall = self.redis.fcall_ro if read_only else self.redis.fcall
        return await redis_functions.call(self.redis, [LIBRARY], lambda: fcall(name, len(keys), *keys, *args))

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
        """Drops every block of a worker; returns how many it held."""
        pattern = f"{PREFIX}:{{*}}:w:{_glob_escape(worker_id)}"
        removed = 0
        keys: list[str] = []
        async for key in self.redis.scan_iter(match=pattern, count=1000):
            keys.append(_text(key))
            if len(keys) >= batch:
                removed += int(await self._fcall(False, "kvmesh_purge", keys, [worker_id]))
                keys = []
        if keys:
            removed += int(await self._fcall(False, "kvmesh_purge", keys, [worker_id]))
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


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
