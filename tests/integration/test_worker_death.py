"""Killed workers leave the registry within their lease and the index forgets their blocks; the
mesh keeps serving on what is left, then answers 503 when none is. On the shared mesh of real
engines, which it then stops: simulated workers would be back (`kvmesh up` restarts what dies)
before the mesh had none."""

import re
import time

import grpc
import httpx
import psutil
import pytest

from kvmesh.v1 import kvindex_pb2, kvindex_pb2_grpc, router_pb2, router_pb2_grpc
from tests.support.waiting import wait_for

LEASE_S = 5.0
BODY = {"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 4}


@pytest.fixture(scope="module")
def mesh(mesh, real_meshes):
    """The shared mesh, stopped after this module: its vLLM workers would take minutes to come back.
    The next module that asks for it gets a fresh one."""
    yield mesh
    real_meshes.release(mesh)


def kill_worker(mesh, index: int) -> tuple[str, psutil.Process]:
    """SIGKILLs worker-<index> (no deregistration: only the lease can tell); returns its id and
    its Triton (which its parent-death signal stops)."""
    worker_id = re.findall(r"worker (w-\w+) ready", mesh.log(f"worker-{index}"))[-1]  # restarted: the newest
    process = next(p for p in mesh.service_processes("worker") if f"--cpus {index}" in " ".join(p.cmdline()))
    (triton,) = [p for p in process.children() if p.name() == "tritonserver"]
    process.kill()
    return worker_id, triton


def listed(stub) -> set[str]:
    return {w.record.id for w in stub.Workers(router_pb2.WorkersRequest()).workers}


def test_killed_workers_disappear_within_their_lease(mesh):
    body = {"model": mesh.model, **BODY}
    assert httpx.post(f"{mesh.http}/v1/chat/completions", json=body, timeout=60).status_code == 200
    with grpc.insecure_channel(mesh.router) as ch, grpc.insecure_channel(mesh.kvindex) as kv:
        stub, index = router_pb2_grpc.RouterStub(ch), kvindex_pb2_grpc.KvIndexStub(kv)
        blocks = {w.worker_id: w.blocks for w in index.Stats(kvindex_pb2.StatsRequest()).workers}
        first, first_triton = kill_worker(mesh, 0)
        killed = time.monotonic()
        wait_for(lambda: first not in listed(stub), timeout_s=LEASE_S + 1.0, what="the dead worker to leave")
        # Its blocks leave the index with it (Purge of an unknown worker removes nothing).
        wait_for(
            lambda: first not in {w.worker_id for w in index.Stats(kvindex_pb2.StatsRequest()).workers},
            timeout_s=3.0,
            what="kvindex to drop the dead worker",
        )
        if blocks.get(first):
            assert index.Purge(kvindex_pb2.PurgeRequest(worker_id=first)).blocks_removed == 0
        assert time.monotonic() - killed < LEASE_S + 4.0
        # The other worker serves on.
        r = httpx.post(f"{mesh.http}/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        _, second_triton = kill_worker(mesh, 1)
        wait_for(lambda: not listed(stub), timeout_s=LEASE_S + 1.0, what="both workers to leave")
    tritons = (first_triton, second_triton)
    wait_for(
        lambda: not any(t.is_running() for t in tritons), timeout_s=20.0, what="the killed workers' Tritons to exit"
    )
    # The gateway's own view follows within its refresh interval: no worker → 503, not a hang.
    deadline = time.monotonic() + 3.0
    while (r := httpx.post(f"{mesh.http}/v1/chat/completions", json=body, timeout=10)).status_code != 503:
        assert time.monotonic() < deadline, r.text
        time.sleep(0.1)
    assert "no live worker" in r.json()["error"]["message"]
