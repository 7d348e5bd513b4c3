"""A killed worker leaves the registry within its lease. Runs last (file order): it takes the
session's only worker away (`kvmesh up` then starts a new one)."""

import time

import grpc
import httpx

from kvmesh.v1 import router_pb2, router_pb2_grpc

LEASE_S = 5.0


def test_killed_worker_disappears_within_its_lease(mesh):
    worker = mesh.service_process("worker")
    with grpc.insecure_channel(mesh.router) as ch:
        stub = router_pb2_grpc.RouterStub(ch)
        (before,) = stub.Workers(router_pb2.WorkersRequest()).workers
        worker.kill()  # SIGKILL: no deregistration, only the lease can tell
        killed = time.monotonic()
        while before.record.id in {w.record.id for w in stub.Workers(router_pb2.WorkersRequest()).workers}:
            assert time.monotonic() - killed < LEASE_S + 1.0, "the dead worker is still listed"
            time.sleep(0.05)
    # The gateway's own view follows within its refresh interval: no worker → 503, not a hang.
    body = {"model": mesh.model, "messages": [{"role": "user", "content": "hi"}]}
    deadline = time.monotonic() + 3.0
    while (r := httpx.post(f"{mesh.http}/v1/chat/completions", json=body, timeout=10)).status_code != 503:
        assert time.monotonic() < deadline, r.text
        time.sleep(0.1)
    assert "no live worker" in r.json()["error"]["message"]
