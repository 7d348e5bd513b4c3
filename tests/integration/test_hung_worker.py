"""A worker whose Triton hangs (SIGSTOP: the process lives, its worker renews the lease, nothing
answers) on a two-worker `kvmesh up --engine sim` mesh, round-robin routing: the stream in flight
there moves to the other worker with every token once, the worker is registered unresponsive within
a few seconds and new requests all go to the other; after SIGCONT it answers, is responsive again
and takes requests again."""

from __future__ import annotations

import time

import httpx
import psutil
import pytest
from google.protobuf import wrappers_pb2

from kvmesh.auth import bearer
from kvmesh.cli.local_mesh import LocalMesh
from kvmesh.v1 import inference_pb2, inference_pb2_grpc, router_pb2, router_pb2_grpc, worker_pb2
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(300)

# The sim engine's step is ~33 ms: a stream of ~5 s, which the SIGSTOP after its first token lands in.
MAX_TOKENS = 150
PROMPT = [504, 3575, 282]
# The worker's heartbeat (every lease/3 = 1.7 s) marks it after two missed 1-s readiness asks.
DETECT_S = 8.0


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    args = ("--engine", "sim", "--workers", "2", "--policy", "round-robin")
    mesh = LocalMesh.start(tmp_path_factory.mktemp("hung-logs"), extra_args=args, ready_timeout_s=300)
    mesh.wait_for_workers(2)
    yield mesh
    assert mesh.stop() == 0, mesh.log("up")


def request(model: str, max_tokens: int) -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(
        model=model,
        token_ids=inference_pb2.TokenIds(ids=PROMPT),
        sampling=inference_pb2.SamplingParams(max_tokens=wrappers_pb2.UInt32Value(value=max_tokens), ignore_eos=True),
    )


def workers(mesh: LocalMesh) -> dict[str, worker_pb2.WorkerRecord]:
    with mesh.channel(mesh.router) as channel:
        listed = router_pb2_grpc.RouterStub(channel).Workers(
            router_pb2.WorkersRequest(), timeout=5, metadata=bearer(mesh.admin_key)
        )
    return {w.record.id: w.record for w in listed.workers}


def triton_of(mesh: LocalMesh, record: worker_pb2.WorkerRecord) -> psutil.Process:
    """The tritonserver child of the worker that registered `record`."""
    port = record.triton_grpc_address.rsplit(":", 1)[1]
    for worker in mesh.service_processes("worker"):
        for child in worker.children():
            if child.name() == "tritonserver" and f"--grpc-port={port}" in child.cmdline():
                return child
    raise AssertionError(f"no tritonserver for {record.id}")


def migrations(mesh: LocalMesh) -> float:
    lines = httpx.get(f"{mesh.http}/metrics").text.splitlines()
    return next((float(x.split()[1]) for x in lines if x.startswith("kvmesh_gateway_migrations_total ")), 0.0)


def served_by(inference, mesh: LocalMesh, count: int) -> list[str]:
    """The workers that answered `count` short requests, one after another."""
    return [list(inference.Generate(request(mesh.model, 4), timeout=30))[-1].worker_id for _ in range(count)]


def test_a_hung_triton_is_routed_around_its_stream_moves_and_it_comes_back(mesh):
    with mesh.channel(mesh.grpc) as channel:
        inference = inference_pb2_grpc.InferenceStub(channel)
        before = migrations(mesh)
        stream = inference.Generate(request(mesh.model, MAX_TOKENS), timeout=120)
        first = next(stream)
        hung = first.worker_id
        triton = triton_of(mesh, workers(mesh)[hung])
        triton.suspend()
        stopped = time.monotonic()
        try:
            wait_for(lambda: workers(mesh)[hung].unresponsive, timeout_s=DETECT_S, what=f"{hung} to be unresponsive")
            rest = list(stream)  # what the gateway had buffered meanwhile, and the rest
            tokens = [*first.token_ids, *(t for r in rest for t in r.token_ids)]
            assert len(tokens) == MAX_TOKENS and rest[-1].usage.completion_tokens == MAX_TOKENS
            assert rest[-1].worker_id != hung and migrations(mesh) == before + 1
            assert hung not in served_by(inference, mesh, 4)  # round-robin would give it two
            assert time.monotonic() - stopped < 60  # nothing waited out a long timeout
        finally:
            triton.resume()
        wait_for(lambda: not workers(mesh)[hung].unresponsive, timeout_s=DETECT_S, what=f"{hung} to answer again")
        assert hung in served_by(inference, mesh, 4)
