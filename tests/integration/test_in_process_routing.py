"""A gateway that routes in its own process at low load (--route-in-process-below), on a mesh of
simulated workers whose router runs round-robin: one request at a time is decided in the gateway,
by the router's policy (the gateway's own default would follow the cached prefix); above the
threshold the router service decides; both release the shared load."""

from __future__ import annotations

import asyncio
import re

import grpc
import httpx
import pytest
from google.protobuf import wrappers_pb2
from prometheus_client.parser import text_string_to_metric_families

from bench.loadgen import run_level
from kvmesh.auth import bearer
from kvmesh.cli.local_mesh import LocalMesh
from kvmesh.v1 import inference_pb2, inference_pb2_grpc, router_pb2, router_pb2_grpc
from tests.support import fuzz
from tests.support.meshes import running
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(300)
WORKERS = 2
BELOW = 2
PROMPT = list(range(1000, 1000 + 5 * 64 + 17))  # five of the simulated engine's KV blocks and a partial one


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    args = (*fuzz.SIM_MESH_ARGS, "--workers", str(WORKERS), "--route-in-process-below", str(BELOW),
            "--policy", "round-robin")  # fmt: skip
    with running(tmp_path_factory.mktemp("in-process-routing-logs"), args, WORKERS) as mesh:
        yield mesh


def decisions(url: str, headers: dict[str, str] | None = None) -> float:
    text = httpx.get(url, headers=headers, timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "kvmesh_router_decisions"
        for sample in family.samples
        if sample.name.endswith("_total")
    )


def counts(mesh: LocalMesh) -> tuple[float, float]:
    """Decisions made so far in the gateway and in the router service."""
    router_metrics = re.search(r"metrics on :(\d+)/metrics", mesh.log("router"))[1]
    return (
        decisions(f"{mesh.http}/metrics", fuzz.key_headers(mesh.admin_key)),
        decisions(f"http://127.0.0.1:{router_metrics}/metrics"),
    )


def no_load(mesh: LocalMesh) -> bool:
    """The shared load in Redis, as the router service reads it, holds no request."""
    with mesh.channel(mesh.router) as channel:
        workers = router_pb2_grpc.RouterStub(channel).Workers(
            router_pb2.WorkersRequest(), timeout=5, metadata=bearer(mesh.admin_key)
        )
    return len(workers.workers) == WORKERS and not any(w.in_flight for w in workers.workers)


def generate(mesh: LocalMesh, ids: list[int]) -> str:
    request = inference_pb2.GenerateRequest(
        model=mesh.model,
        token_ids=inference_pb2.TokenIds(ids=ids),
        sampling=inference_pb2.SamplingParams(max_tokens=wrappers_pb2.UInt32Value(value=2)),
    )
    with grpc.insecure_channel(mesh.grpc) as channel:
        answers = inference_pb2_grpc.InferenceStub(channel).Generate(request, metadata=bearer(mesh.admin_key))
        return list(answers)[-1].worker_id


def test_one_request_at_a_time_is_decided_in_the_gateway_by_the_routers_policy(mesh):
    # The first Route opens the gateway's session to the router, which tells it how it decides.
    wait_for(lambda: generate(mesh, PROMPT) and counts(mesh)[0] > 0, timeout_s=10, what="a Route in the gateway")
    before = counts(mesh)
    workers = [generate(mesh, PROMPT) for _ in range(4)]
    # Round-robin, although the prompt's blocks are on one of them.
    assert workers[0] != workers[1] and workers[::2] == [workers[0]] * 2 and workers[1::2] == [workers[1]] * 2
    in_gateway, in_router = (after - then for after, then in zip(counts(mesh), before, strict=True))
    assert in_gateway == 4 and in_router == 0, (in_gateway, in_router)
    wait_for(lambda: no_load(mesh), timeout_s=5, what="the shared load released")


def test_above_the_threshold_the_router_service_decides(mesh):
    before = counts(mesh)
    bodies = [{"model": mesh.model, "prompt": f"Number {i}", "max_tokens": 64, "ignore_eos": True} for i in range(24)]
    url = f"{mesh.http}/v1/completions"
    result = asyncio.run(run_level(url, bodies, concurrency=8, headers=fuzz.key_headers(mesh.admin_key)))
    assert len(result.timings) == len(bodies)  # one_request raises on an error status
    in_gateway, in_router = (after - then for after, then in zip(counts(mesh), before, strict=True))
    assert in_gateway + in_router == len(bodies)
    assert in_gateway >= 1 and in_router >= len(bodies) / 2, (in_gateway, in_router)
    wait_for(lambda: no_load(mesh), timeout_s=5, what="the shared load released")
