"""A vLLM general plugin (vLLM loads it in every engine process, workers included): NIXL's
progress thread sleeps up to KVMESH_NIXL_PROGRESS_DELAY_US (default 1000 µs) when it has nothing
to progress.

NIXL's Python agent hard-codes a delay of 0, a busy loop: each idle prefill or decode engine burns
a whole core (measured here: ~98% of a core per vLLM worker, mostly in system calls), which on a
2-core machine is the core its engine computes on. With 1 ms an idle agent takes ~2% of a core
and a transfer's completion is seen at most 1 ms later.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)
DEFAULT_DELAY_US = 1000


def register() -> None:
    delay_us = int(os.environ.get("KVMESH_NIXL_PROGRESS_DELAY_US", DEFAULT_DELAY_US))
    # vLLM sets this before it imports NIXL (a UCX memory-cache leak); importing NIXL here first
    # would stop it from doing so.
    os.environ.setdefault("UCX_RCACHE_MAX_UNRELEASED", "1024")
    try:
        import nixl._api as nixl_api
    except ImportError:  # no NIXL in this environment: nothing to tune
        return
    bindings = nixl_api.nixlBind
    if getattr(bindings.nixlAgent, "kvmesh_delay_us", None) == delay_us:
        return
    make_agent = getattr(bindings.nixlAgent, "kvmesh_original", bindings.nixlAgent)

    def agent_with_delay(name, config):
        config.pthrDelay = delay_us
        return make_agent(name, config)

    agent_with_delay.kvmesh_delay_us = delay_us
    agent_with_delay.kvmesh_original = make_agent
    bindings.nixlAgent = agent_with_delay
    log.info("NIXL progress thread: %d us delay when idle", delay_us)
