"""The cyclic garbage collector, tuned once a process is ready to serve.

A process that imported vLLM tracks ~660k objects, and one full (generation 2) collection walks
them all: hundreds of milliseconds on a CPU machine, a stall of every stream the process
serves, at a moment nobody chooses. What start-up built lives until exit, so once a process is ready it
is collected one last time and frozen, as vLLM's own API server and engine core do.

A request allocates thousands of container objects (protobufs, dicts, coroutines), nearly all freed
by reference counting within the request. At Python's default (a young collection every 700 net
allocations) a request pays several collections that find nothing; every YOUNG_THRESHOLD
allocations instead: `bench.ab` measured 0.86-1.00x the mesh's CPU a request and 1.01-1.18x its
req/s at c = 1, 16 and 64 (figures in bench/RESULTS.md). Cyclic garbage then waits longer: at most
that many objects, a few MB.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)

YOUNG_THRESHOLD = 50_000


def freeze_startup_heap() -> None:
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
    log.info("froze %d start-up objects out of the garbage collector", gc.get_freeze_count())
