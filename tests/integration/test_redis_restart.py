"""Redis dies and comes back (empty; `kvmesh up` restarts its own): every request meanwhile is
served (routed by load, on the workers last seen), then the index is rebuilt from the engines'
KV-event replay buffers and KV-aware routing resumes. The mesh is then as other tests expect it."""

import random
import time

import grpc
import psutil

from kvmesh import hashing
from kvmesh.v1 import inference_pb2_grpc, kvindex_pb2, kvindex_pb2_grpc, router_pb2, router_pb2_grpc
from tests.integration.test_kv_routing import BLOCK, PROMPT_BLOCKS, generate
from tests.support.waiting import wait_for


def test_routing_survives_a_redis_restart_and_the_index_is_rebuilt(mesh):
    ids = random.Random(99).choices(range(1000, 20000), k=PROMPT_BLOCKS * BLOCK + 5)
    hashes = hashing.sequence_hashes(ids, BLOCK, mesh.model)
    with (
        grpc.insecure_channel(mesh.grpc) as g,
        grpc.insecure_channel(mesh.kvindex) as k,
        grpc.insecure_channel(mesh.router) as r,
    ):
        inference, index, router = (
            inference_pb2_grpc.InferenceStub(g),
            kvindex_pb2_grpc.KvIndexStub(k),
            router_pb2_grpc.RouterStub(r),
        )

        def depth(worker_id: str) -> int:
            try:
                reply = index.Match(kvindex_pb2.MatchRequest(model=mesh.model, block_hashes=hashes))
            except grpc.RpcError:
                return -1
            return {o.worker_id: o.blocks for o in reply.overlaps}.get(worker_id, 0)

        holder = generate(inference, mesh.model, ids).worker_id
        wait_for(lambda: depth(holder) == PROMPT_BLOCKS, timeout_s=5, what="the prompt in the index")

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
        wait_for(lambda: depth(holder) == PROMPT_BLOCKS, timeout_s=30, what="the index rebuilt")
        route = router_pb2.RouteRequest(model=mesh.model, num_tokens=len(ids), block_hashes=hashes, block_size=BLOCK)
        wait_for(
            lambda: router.Explain(router_pb2.ExplainRequest(request=route)).chosen_worker_id == holder,
            timeout_s=10,
            what="KV-aware routing back",
        )
        assert generate(inference, mesh.model, ids).usage.cached_tokens >= (PROMPT_BLOCKS - 1) * BLOCK
        # Rebuilding replayed old batches: kvindex must not count them as event lag.
        assert index.Stats(kvindex_pb2.StatsRequest()).lag_ms_p50 < 1000
