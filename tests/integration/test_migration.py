"""A worker killed mid-stream: the gateway moves the request to the other worker (prompt + the
tokens already sent, for the tokens still owed), and the client gets every token once — the
same greedy tokens as an undisturbed run. The mesh is left as it was found: `kvmesh up` restarts
the dead worker (under a new id) and the dead one's id leaves the registry and the index."""

import grpc
import httpx
import pytest
from google.protobuf import wrappers_pb2

from kvmesh.v1 import inference_pb2, inference_pb2_grpc, kvindex_pb2, kvindex_pb2_grpc, router_pb2, router_pb2_grpc
from tests.integration.conftest import WORKERS
from tests.support import prompts
from tests.support.crash import crash
from tests.support.waiting import wait_for

# Long enough that the kill lands mid-stream even in a slow phase: the prompt is cached by the
# reference run, so the stream is all decode (64 tokens were once done before the kill landed).
MAX_TOKENS = 256


def request(model: str) -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(
        model=model,
        token_ids=inference_pb2.TokenIds(ids=prompts.english("medium-450", 450)),
        sampling=inference_pb2.SamplingParams(
            max_tokens=wrappers_pb2.UInt32Value(value=MAX_TOKENS),
            temperature=wrappers_pb2.FloatValue(value=0.0),
            ignore_eos=True,
        ),
    )


def migrations(mesh) -> float:
    lines = httpx.get(f"{mesh.http}/metrics").text.splitlines()
    return next((float(x.split()[1]) for x in lines if x.startswith("kvmesh_gateway_migrations_total ")), 0.0)


def worker_processes(mesh) -> dict:
    """Each worker id's `kvmesh worker` process (found before the stream starts, so the kill
    lands at once)."""
    with grpc.insecure_channel(mesh.router) as channel:
        workers = router_pb2_grpc.RouterStub(channel).Workers(router_pb2.WorkersRequest()).workers
    ports = {w.record.triton_grpc_address.rsplit(":", 1)[1]: w.record.id for w in workers}
    found = {}
    for process in mesh.service_processes("worker"):
        for child in process.children():
            if child.name() == "tritonserver":
                found |= {ports[p]: process for p in ports if f"--grpc-port={p}" in child.cmdline()}
    return found


@pytest.fixture
def killed(mesh):
    """The ids of the workers the test kills; then the mesh as the other tests expect it: as many
    workers as before (`kvmesh up` restarts the dead), and the dead ones' ids gone from the router
    and the index."""
    gone: set[str] = set()
    yield gone
    mesh.wait_for_workers(WORKERS, timeout_s=600, gone=frozenset(gone))
    with grpc.insecure_channel(mesh.router) as r, grpc.insecure_channel(mesh.kvindex) as k:
        router, index = router_pb2_grpc.RouterStub(r), kvindex_pb2_grpc.KvIndexStub(k)

        def known() -> set[str]:
            listed = {w.record.id for w in router.Workers(router_pb2.WorkersRequest()).workers}
            return listed | {w.worker_id for w in index.Stats(kvindex_pb2.StatsRequest()).workers}

        wait_for(lambda: not known() & gone, timeout_s=15, what="the dead workers' leases to run out")


def test_a_stream_whose_worker_dies_continues_on_the_other_worker(mesh, killed):
    with grpc.insecure_channel(mesh.grpc) as channel:
        inference = inference_pb2_grpc.InferenceStub(channel)
        reference = [t for r in inference.Generate(request(mesh.model), timeout=120) for t in r.token_ids]
        before = migrations(mesh)
        processes = worker_processes(mesh)
        stream = inference.Generate(request(mesh.model), timeout=120)
        first = next(stream)
        killed.add(first.worker_id)
        clean_up = crash(processes[first.worker_id])  # SIGKILL: an abrupt death, no drain
        rest = list(stream)
    clean_up()
    tokens = [*first.token_ids, *(t for r in rest for t in r.token_ids)]
    assert migrations(mesh) == before + 1
    assert rest[-1].worker_id != first.worker_id and rest[-1].usage.completion_tokens == MAX_TOKENS
    assert tokens == reference
