"""In-flight accounting: which worker each routed request is on, and in which phase.

A request enters at Route (its uncached blocks count as prefill load), moves to decode load at
MarkPrefilled and leaves at Release. A lease bounds how long a request whose gateway vanished
keeps counting.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

from kvmesh.routing.framework.types import WorkerLoad


@dataclass
class Entry:
    worker_id: str
    prefill_blocks: int
    decode_blocks: int
    expires: float
    prefilled: bool = False


class InFlight:
    def __init__(self, lease_s: float):
        self.lease_s = lease_s
        self._entries: dict[str, Entry] = {}
        self._loads: dict[str, WorkerLoad] = defaultdict(WorkerLoad)

    def load(self, worker_id: str) -> WorkerLoad:
        return self._loads.get(worker_id) or WorkerLoad()

    def add(self, request_id: str, worker_id: str, prefill_blocks: int, total_blocks: int) -> None:
        self.release(request_id)  # a retried id replaces its earlier entry
        entry = Entry(worker_id, prefill_blocks, total_blocks, time.monotonic() + self.lease_s)
        self._entries[request_id] = entry
        load = self._loads[worker_id]
        load.in_flight += 1
        load.prefill_blocks += prefill_blocks

    def mark_prefilled(self, request_id: str) -> bool:
        entry = self._entries.get(request_id)
        if entry is None or entry.prefilled:
            return entry is not None
        entry.prefilled = True
        load = self._loads[entry.worker_id]
        load.prefill_blocks -= entry.prefill_blocks
        load.decode_blocks += entry.decode_blocks
        return True

    def release(self, request_id: str) -> bool:
        entry = self._entries.pop(request_id, None)
        if entry is None:
            return False
        load = self._loads[entry.worker_id]
        load.in_flight -= 1
        if entry.prefilled:
            load.decode_blocks -= entry.decode_blocks
        else:
            load.prefill_blocks -= entry.prefill_blocks
        if load.in_flight == 0:
            del self._loads[entry.worker_id]
        return True

    def expire(self, live_workers: set[str]) -> int:
        """Forget requests past their lease or on workers that left; returns how many."""
        now = time.monotonic()
        stale = [rid for rid, e in self._entries.items() if e.expires < now or e.worker_id not in live_workers]
        for rid in stale:
            self.release(rid)
        return len(stale)
