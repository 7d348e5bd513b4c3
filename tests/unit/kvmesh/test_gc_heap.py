"""Once ready, a process's start-up heap is frozen and young collections come far less often."""

from __future__ import annotations

import gc

from kvmesh import gc_heap


def test_the_start_up_heap_is_frozen_and_young_collections_are_rarer():
    threshold = gc.get_threshold()
    try:
        kept = [[] for _ in range(10)]  # objects alive at start-up
        gc_heap.freeze_startup_heap()
        assert gc.get_freeze_count() >= len(kept)
        assert gc.get_threshold() == (gc_heap.YOUNG_THRESHOLD, threshold[1], threshold[2])
        before = gc.get_stats()[0]["collections"]
        garbage = [[] for _ in range(5_000)]  # far more than Python's default of 700
        assert gc.get_stats()[0]["collections"] == before
        del garbage
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
