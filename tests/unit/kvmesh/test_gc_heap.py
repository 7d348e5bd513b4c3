"""Once ready, a process's start-up heap is frozen and young collections come far less often."""

from __future__ import annotations

import gc

from kvmesh import gc_heap, grpc_server


async def test_a_service_that_is_up_has_its_start_up_heap_frozen():
    threshold = gc.get_threshold()
    gc.unfreeze()
    built_at_start_up = [{"n": i} for i in range(10_000)]
    served = await grpc_server.serve("test", "127.0.0.1", 0, lambda server: None)
    try:
        assert gc.get_freeze_count() >= len(built_at_start_up)
        walked = {id(o) for o in gc.get_objects()}  # what a collection walks; frozen objects are not
        assert not any(id(o) in walked for o in built_at_start_up)
    finally:
        await served.server.stop(None)
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_once_frozen_young_collections_wait_for_far_more_allocations():
    threshold = gc.get_threshold()
    try:
        gc_heap.freeze_startup_heap()
        assert gc.get_threshold() == (gc_heap.YOUNG_THRESHOLD, threshold[1], threshold[2])
        before = gc.get_stats()[0]["collections"]
        garbage = [[] for _ in range(5_000)]  # far more than Python's default of 700
        assert gc.get_stats()[0]["collections"] == before
        del garbage
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
