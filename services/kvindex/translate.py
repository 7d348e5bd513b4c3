"""Engine block hashes → canonical ones, per worker.

Engines name blocks with their own hashes; the index speaks the canonical chained hashes of
kvmesh.hashing. A BlockStored event carries the new blocks' token ids and the engine hash of
their parent, so the canonical chain continues from the parent's canonical hash; the per-worker
map engine hash → (root, seq) also turns BlockRemoved into canonical keys.

A malformed BlockStored (block size outside 1..max_block_size, a bytes hash longer than
kv_events.MAX_HASH_BYTES, token ids that do not make its blocks or lie outside u32) and one that
would take the worker past `max_blocks` are dropped and counted by reason: dropping a store only
makes the index under-report.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from kvmesh import hashing
from kvmesh.block_index import BlockRun
from kvmesh.kv_events import MAX_HASH_BYTES, AllBlocksCleared, BlockRemoved, BlockStored, EngineHash, EventBatch


@dataclass
class Translation:
    # True: forget everything the worker held before `runs`.
    cleared: bool = False
    runs: list[BlockRun] = field(default_factory=list)
    # Blocks that could not be placed (parent never seen, e.g. after a gap) or removals of
    # blocks never seen: dropped, so the index under-reports rather than lies.
    dropped: int = 0
    # Malformed BlockStored events dropped, by reason (block_size, block_hash, token_ids, worker_full).
    malformed: Counter[str] = field(default_factory=Counter)


class WorkerBlocks:
    def __init__(self, identity: str, max_block_size: int, max_blocks: int):
        self.identity = identity
        self.max_block_size = max_block_size
        self.max_blocks = max_blocks
        self._canonical: dict[EngineHash, tuple[int, int]] = {}
        # A store was translated since the last clear: only then may the index hold blocks of the
        # worker (the map may not tell: a hash stored twice with other tokens keeps one entry of two).
        self.in_index = False

    def __len__(self) -> int:
        return len(self._canonical)

    def clear(self) -> None:
        self._canonical.clear()
        self.in_index = False

    def translate(self, batch: EventBatch) -> Translation:
        out = Translation()
        for event in batch.events:
            if isinstance(event, BlockStored):
                self._stored(event, out)
            elif isinstance(event, BlockRemoved):
                self._removed(event, out)
            elif isinstance(event, AllBlocksCleared) and self.in_index:
                # Otherwise it changes nothing: a stream of them must not purge (scan Redis) each.
                self.clear()
                out.cleared, out.runs = True, []
        return out

    def _stored(self, event: BlockStored, out: Translation) -> None:
        if not event.block_hashes:
            return
        parent = None
        if event.parent_block_hash is not None:
            parent = self._canonical.get(event.parent_block_hash)
            if parent is None:
                out.dropped += len(event.block_hashes)
                return
        reason = self._malformed(event)
        if reason is None:
            try:
                seqs = hashing.sequence_hashes(
                    event.token_ids, event.block_size, self.identity, parent_seq=parent[1] if parent else None
                )
            except OverflowError:  # a token id outside u32
                reason = "token_ids"
        if reason is not None:
            out.malformed[reason] += 1
            out.dropped += len(event.block_hashes)
            return
        root = parent[0] if parent else seqs[0]
        for engine_hash, seq in zip(event.block_hashes, seqs, strict=True):
            self._canonical[engine_hash] = (root, seq)
        out.runs.append(BlockRun(True, root, seqs))
        self.in_index = True

    def _malformed(self, event: BlockStored) -> str | None:
        if not 0 < event.block_size <= self.max_block_size:
            return "block_size"
        if any(isinstance(h, bytes) and len(h) > MAX_HASH_BYTES for h in event.block_hashes):
            return "block_hash"
        # Before hashing: a 64-MiB message of one hash and block size 1 is ~13M blocks' hashing.
        if len(event.token_ids) != event.block_size * len(event.block_hashes):
            return "token_ids"
        if len(self._canonical) + len(event.block_hashes) > self.max_blocks:
            return "worker_full"
        return None

    def _removed(self, event: BlockRemoved, out: Translation) -> None:
        for engine_hash in event.block_hashes:
            known = self._canonical.pop(engine_hash, None)
            if known is None:
                out.dropped += 1
                continue
            root, seq = known
            last = out.runs[-1] if out.runs else None
            if last is not None and not last.stored and last.root == root:
                last.seqs.append(seq)
            else:
                out.runs.append(BlockRun(False, root, [seq]))
