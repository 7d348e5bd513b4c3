"""Paged KV blocks with prefix caching and LRU eviction, emitting vLLM-format KV events.

A fixed number of blocks. Full blocks are named by their chained hash and stay cached after their
request ends (reference count 0: evictable, least recently used first). At admission a request
pins its cached prefix and reserves every other block it can need (prompt + max_tokens), evicting
if it must, so decoding never runs out of blocks; if even eviction cannot make room it waits.
Events: BlockStored when blocks fill (prompt blocks at the end of prefill, output blocks as
decoding fills them), BlockRemoved on eviction.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from kvmesh import hashing
from kvmesh.kv_events import BlockRemoved, BlockStored, Event


@dataclass
class Sequence:
    tokens: list[int]
    # Reserved blocks not yet filled.
    reserved: int
    # Hashes of its full blocks, in order (pinned while the request runs).
    full: list[int] = field(default_factory=list)
    cached_tokens: int = 0


class NoSpace(Exception):
    """Not enough free or evictable blocks right now."""


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, emit: Callable[[list[Event]], None]):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.emit = emit
        self._refs: dict[int, int] = {}  # cached full blocks → running requests using them
        self._evictable: OrderedDict[int, None] = OrderedDict()  # refs == 0, least recently used first
        self._reserved = 0

    @property
    def free(self) -> int:
        return self.num_blocks - len(self._refs) - self._reserved

    @property
    def cached(self) -> int:
        return len(self._refs)

    @property
    def in_use(self) -> int:
        """Blocks running requests hold or reserved; like vLLM's usage, evictable cached blocks count as free."""
        return len(self._refs) - len(self._evictable) + self._reserved

    def admit(self, prompt: list[int], max_tokens: int) -> Sequence:
        """Pins the cached prefix and reserves the rest; raises NoSpace if it cannot fit now."""
        hashes = [b.seq for b in hashing.block_hashes(prompt, self.block_size)]
        hit = 0
        while hit < len(hashes) and hashes[hit] in self._refs:
            hit += 1
        # Like vLLM: the last prompt token is always computed, so a fully cached prompt
        # recomputes its last block.
        if hit and hit * self.block_size == len(prompt):
            hit -= 1
        needed = -(-(len(prompt) + max_tokens) // self.block_size) - hit
        for block in hashes[:hit]:
            self._pin(block)
        if needed > self.free + len(self._evictable):
            for block in hashes[:hit]:
                self._unpin(block)
            raise NoSpace
        self._evict(needed - self.free)
        self._reserved += needed
        return Sequence(list(prompt), needed, hashes[:hit], cached_tokens=hit * self.block_size)

    def fill(self, seq: Sequence) -> None:
        """Caches every newly full block of `seq`; call once its tokens are computed."""
        done = len(seq.full)
        parent = seq.full[-1] if seq.full else None
        events: list[Event] = []
        run: list[int] = []  # newly stored blocks, contiguous: one BlockStored each run
        run_start = done
        for block in hashing.block_hashes(seq.tokens[done * self.block_size :], self.block_size, parent_seq=parent):
            if seq.reserved == 0:  # cannot happen with admission's reservation; stay safe
                self._evict(1 - self.free)
                self._reserved += 1
                seq.reserved += 1
            seq.reserved -= 1
            self._reserved -= 1
            if block.seq in self._refs:  # another request computed the same block meanwhile
                self._pin(block.seq)
                events += self._stored(seq, run_start, run)
                run, run_start = [], len(seq.full) + 1
            else:
                self._refs[block.seq] = 1
                run.append(block.seq)
            seq.full.append(block.seq)
        events += self._stored(seq, run_start, run)
        if events:
            self.emit(events)

    def _stored(self, seq: Sequence, start: int, run: list[int]) -> list[Event]:
        if not run:
            return []
        size = self.block_size
        parent = seq.full[start - 1] if start else None
        tokens = seq.tokens[start * size : (start + len(run)) * size]
        return [BlockStored(run, parent, tokens, size, lora_id=None, medium="GPU", lora_name=None)]

    def release(self, seq: Sequence) -> None:
        for block in seq.full:
            self._unpin(block)
        self._reserved -= seq.reserved
        seq.reserved = 0
        seq.full = []

    def _pin(self, block: int) -> None:
        self._refs[block] += 1
        self._evictable.pop(block, None)

    def _unpin(self, block: int) -> None:
        self._refs[block] -= 1
        if self._refs[block] == 0:
            self._evictable[block] = None  # most recently used

    def _evict(self, count: int) -> None:
        removed = []
        for _ in range(max(count, 0)):
            block, _ = self._evictable.popitem(last=False)
            del self._refs[block]
            removed.append(block)
        if removed:
            self.emit([BlockRemoved(removed, medium="GPU")])
