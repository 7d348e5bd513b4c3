"""A worker killed mid-stream: the gateway moves the request to the other worker (prompt + the
tokens already sent, for the tokens still owed), and the client gets every token once — the
same greedy tokens as an undisturbed run. Runs late (file order): it kills a worker, and waits
for `kvmesh up` to bring it back."""

import grpc
import httpx
from google.protobuf import wrappers_pb2

from kvmesh.v1 import inference_pb2, inference_pb2_grpc, router_pb2, router_pb2_grpc
from tests.integration.test_aa_disagg import prompt
from tests.support.crash import crash

MAX_TOKENS = 64


def request(model: str) -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(
        model=model,
        token_ids=inference_pb2.TokenIds(ids=prompt("medium-450")),
        sampling=inference_pb2.SamplingParams(
            max_tokens=wrappers_pb2.UInt32Value(value=MAX_TOKENS),
            temperature=wrappers_pb2.FloatValue(value=0.0),
            ignore_eos=True,
        ),
    )


def migrations(mesh) -> float:
    lines = httpx.get(f"{mesh.http}/metrics").text.splitlines()
    return next((float(x.split()[1]) for x in lines if x.startswith("kvmesh_gateway_migrations_total ")), 0.0)


def kill_worker_serving(mesh, worker_id: str):
    """SIGKILL the worker, its Triton and its engine processes: an abrupt death, no drain."""
    with grpc.insecure_channel(mesh.router) as channel:
        workers = router_pb2_grpc.RouterStub(channel).Workers(router_pb2.WorkersRequest()).workers
    port = next(w.record.triton_grpc_address for w in workers if w.record.id == worker_id).rsplit(":", 1)[1]
    for process in mesh.service_processes("worker"):
        if any(f"--grpc-port={port}" in c.cmdline() for c in process.children() if c.name() == "tritonserver"):
            return crash(process)
    raise AssertionError(f"no process for {worker_id}")


def test_a_stream_whose_worker_dies_continues_on_the_other_worker(mesh):
    with grpc.insecure_channel(mesh.grpc) as channel:
        inference = inference_pb2_grpc.InferenceStub(channel)
        reference = [t for r in inference.Generate(request(mesh.model), timeout=120) for t in r.token_ids]
        before = migrations(mesh)
        stream = inference.Generate(request(mesh.model), timeout=120)
        first = next(stream)
        clean_up = kill_worker_serving(mesh, first.worker_id)
        rest = list(stream)
    clean_up()
    tokens = [*first.token_ids, *(t for r in rest for t in r.token_ids)]
    assert migrations(mesh) == before + 1
    assert rest[-1].worker_id != first.worker_id and rest[-1].usage.completion_tokens == MAX_TOKENS
    assert tokens == reference
    # kvmesh up restarts the dead one for the tests after this (under a new id).
    mesh.wait_for_workers(2, timeout_s=600, gone=frozenset({first.worker_id}))
