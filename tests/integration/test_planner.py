"""The planner in `kvmesh up --disagg --planner`, on simulated prefill/decode workers (real Triton,
gateway, router, Redis): `kvmesh profile` measures the engine, the planner reads the gateway's
metrics, its RPCs answer over gRPC and REST, and under load its local connector starts a decode
worker (no request fails), then stops it when the load is gone."""

import threading

import grpc
import httpx
import pytest
from google.protobuf import wrappers_pb2

from kvmesh.cli.local_mesh import LocalMesh
from kvmesh.profile import EngineProfile
from kvmesh.v1 import (
    inference_pb2,
    inference_pb2_grpc,
    planner_pb2,
    planner_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
    worker_pb2,
)
from tests.integration.conftest import PROFILE_CONTEXT as CONTEXT
from tests.support.waiting import wait_for


@pytest.fixture(scope="module")
def planned(tmp_path_factory, sim_profile):
    # An ITL target a worker meets with one sequence only: a few concurrent streams need more.
    itl_target = EngineProfile.load(sim_profile).itl_ms(1, CONTEXT) * 1.02
    planner_args = f"--interval-s 1 --cooldown-s 0 --down-after 3 --max-replicas 3 --itl-ms {itl_target:.2f}"
    args = (
        "--engine",
        "sim",
        "--disagg",
        "--planner",
        "--planner-profile",
        str(sim_profile),
        "--planner-args",
        planner_args,
        "--rest-internal",  # the planner's status over REST
    )
    mesh = LocalMesh.start(tmp_path_factory.mktemp("planner-mesh-logs"), extra_args=args)
    mesh.wait_for_workers(2)
    yield mesh
    assert mesh.stop() == 0, mesh.log("up")


def status(mesh) -> planner_pb2.StatusResponse:
    with grpc.insecure_channel(mesh.planner) as channel:
        return planner_pb2_grpc.PlannerStub(channel).Status(planner_pb2.StatusRequest(), timeout=5)


def decode_workers(mesh) -> set[str]:
    with grpc.insecure_channel(mesh.router) as channel:
        workers = router_pb2_grpc.RouterStub(channel).Workers(router_pb2.WorkersRequest(), timeout=5).workers
    return {w.record.id for w in workers if w.record.role == worker_pb2.ROLE_DECODE}


def test_the_profile_has_its_curves(sim_profile):
    measured = EngineProfile.load(sim_profile)
    assert [p.isl for p in measured.prefill] == [128, 1024]
    assert measured.ttft_ms(1024) > measured.ttft_ms(128)  # the simulator's prefill grows with the prompt
    assert measured.itl_ms(4, CONTEXT) > measured.itl_ms(1, CONTEXT)  # and a decode step with the batch


def test_status_plan_and_targets_over_grpc_and_rest(planned):
    wait_for(lambda: not status(planned).degraded, timeout_s=20, what="a first decision from real metrics")
    decided = status(planned)
    assert decided.connector == "local"
    assert [(d.role, d.current_replicas) for d in decided.last_decisions] == [
        (worker_pb2.ROLE_PREFILL, 1),
        (worker_pb2.ROLE_DECODE, 1),
    ]
    assert all(d.reason for d in decided.last_decisions)
    with grpc.insecure_channel(planned.planner) as channel:
        stub = planner_pb2_grpc.PlannerStub(channel)
        assert len(stub.Plan(planner_pb2.PlanRequest()).decisions) == 2
        with pytest.raises(grpc.RpcError) as bad:
            stub.SetTargets(planner_pb2.SetTargetsRequest(targets=planner_pb2.Targets(ttft_ms=100, itl_ms=0)))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "itl_ms" in bad.value.details()
    rest = httpx.get(f"{planned.rest}/v1/planner/status", timeout=10).json()
    assert rest["connector"] == "local" and rest["targets"]["max_replicas"] == 3


def test_load_grows_the_decode_pool_and_its_end_shrinks_it(planned):
    before = decode_workers(planned)
    failures, served, stop = [], [], threading.Event()

    def stream_forever(seed: int) -> None:
        with grpc.insecure_channel(planned.grpc) as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            while not stop.is_set():
                request = inference_pb2.GenerateRequest(
                    model=planned.model,
                    token_ids=inference_pb2.TokenIds(ids=[1000 + seed * 7 + i for i in range(40)]),
                    sampling=inference_pb2.SamplingParams(
                        max_tokens=wrappers_pb2.UInt32Value(value=48), ignore_eos=True
                    ),
                )
                try:
                    last = list(stub.Generate(request, timeout=60))[-1]
                    served.append((last.worker_id, last.usage.completion_tokens))
                except grpc.RpcError as e:
                    failures.append(e.details())

    clients = [threading.Thread(target=stream_forever, args=(i,)) for i in range(4)]
    for c in clients:
        c.start()
    try:
        wait_for(lambda: len(decode_workers(planned)) == 2, timeout_s=60, what="the planner to add a decode worker")
        added = decode_workers(planned) - before
        wait_for(lambda: added & {w for w, _ in served}, timeout_s=30, what="the new worker serving requests")
    finally:
        stop.set()
        for c in clients:
            c.join()
    assert not failures, failures[:3]
    assert {tokens for _, tokens in served} == {48}
    wait_for(lambda: decode_workers(planned) == before, timeout_s=60, what="the added worker to be stopped")
    assert any("scale down" in d.reason for d in status(planned).last_decisions) or decode_workers(planned) == before
    assert f"started {next(iter(added))}" in planned.log("planner")
