"""Redis dies and comes back (empty; `kvmesh up` restarts its own): every request meanwhile is
served (routed by load, on the workers last seen), then the index is rebuilt from the engines'
KV-event replay buffers and KV-aware routing resumes. The mesh is then as other tests expect it."""

import random
import time

import psutil

from kvmesh.v1 import kvindex_pb2
from tests.integration.test_kv_routing import BLOCK, PROMPT_BLOCKS, generate
from tests.support.index_probe import index_probe
from tests.support.waiting import wait_for


def test_routing_survives_a_redis_restart_and_the_index_is_rebuilt(mesh):
    ids = random.Random(99).choices(range(1000, 20000), k=PROMPT_BLOCKS * BLOCK + 5)
    with index_probe(mesh, BLOCK) as probe:
        inference = probe.inference
        holder = generate(inference, mesh.model, ids).worker_id
        wait_for(lambda: probe.depth(ids, holder) == PROMPT_BLOCKS, timeout_s=5, what="the prompt in the index")

        redis = next(p for p in psutil.Process(mesh.process.pid).children() if p.name() == "redis-server")
        redis.kill()
        other = random.Random(100).choices(range(1000, 20000), k=300)

        # Redis down, back empty (kvmesh up restarts it), and past the workers' next heartbeat
        # (lease/3): every request meanwhile is served; the registry's last view is kept.
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            assert generate(inference, mesh.model, other).worker_id
        wait_for(lambda: "Redis unreachable" in mesh.log("router"), timeout_s=5, what="the router saying so")

        wait_for(lambda: "redis-server exited" in mesh.log("up"), timeout_s=5, what="kvmesh up restarting Redis")
        # Workers re-register on their next heartbeat; kvindex resubscribes and replays.
        wait_for(lambda: probe.depth(ids, holder) == PROMPT_BLOCKS, timeout_s=30, what="the index rebuilt")
        wait_for(lambda: probe.chosen(ids) == holder, timeout_s=10, what="KV-aware routing back")
        assert generate(inference, mesh.model, ids).usage.cached_tokens >= (PROMPT_BLOCKS - 1) * BLOCK
        # Rebuilding replayed old batches: kvindex must not count them as event lag.
        assert probe.index.Stats(kvindex_pb2.StatsRequest()).lag_ms_p50 < 1000
