"""Role changes on running Triton workers (the planner's triton connector), on simulated
prefill/decode workers with real Triton, router, gateway and Redis: a decode worker serving
streams is asked to become a prefill worker; it drains (the router sends it nothing new, its
streams finish), swaps its model through Triton's repository API and registers as prefill —
and no request fails or loses a token. Then it comes back. And the planner itself, with the triton
connector: load moves a prefill worker to the decode pool, and the end of the load does not move
it back (a surplus alone stays)."""

import asyncio
import threading
import time

import grpc
import pytest
from google.protobuf import wrappers_pb2

from kvmesh import registry
from kvmesh.cli.local_mesh import LocalMesh
from kvmesh.profile import EngineProfile
from kvmesh.v1 import inference_pb2, inference_pb2_grpc, router_pb2, router_pb2_grpc, worker_pb2
from services.planner.connectors.triton import TritonConnector
from tests.integration.conftest import PROFILE_CONTEXT
from tests.support.waiting import wait_for

MAX_TOKENS = 48


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    args = ("--engine", "sim", "--disagg", "--prefill-workers", "1", "--decode-workers", "2")
    mesh = LocalMesh.start(tmp_path_factory.mktemp("role-change-logs"), extra_args=args)
    mesh.wait_for_workers(3)
    yield mesh
    assert mesh.stop() == 0, mesh.log("up")


def statuses(mesh) -> list[router_pb2.WorkerStatus]:
    with grpc.insecure_channel(mesh.router) as channel:
        return list(router_pb2_grpc.RouterStub(channel).Workers(router_pb2.WorkersRequest(), timeout=5).workers)


def records(mesh) -> dict[str, worker_pb2.WorkerRecord]:
    return {w.record.id: w.record for w in statuses(mesh)}


def connector(mesh) -> TritonConnector:
    def assign(worker_id: str, triton_model: str) -> None:
        async def write() -> None:
            client = registry.connect(mesh.redis_url)
            await registry.Registry(client).assign(worker_id, triton_model, 60_000)
            await client.aclose()

        asyncio.run(write())

    return TritonConnector(lambda: records(mesh), assign, "sim", 60.0)


class Load:
    """Four clients streaming without pause; every answer and every failure kept."""

    def __init__(self, mesh):
        self.mesh, self.stop = mesh, threading.Event()
        self.served: list[tuple[str, int]] = []
        self.failures: list[str] = []
        self.clients = [threading.Thread(target=self._stream, args=(i,)) for i in range(4)]

    def _stream(self, seed: int) -> None:
        with grpc.insecure_channel(self.mesh.grpc) as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            n = 0
            while not self.stop.is_set():
                n += 1
                request = inference_pb2.GenerateRequest(
                    model=self.mesh.model,
                    token_ids=inference_pb2.TokenIds(ids=[2000 + seed * 97 + n * 7 + i for i in range(40)]),
                    sampling=inference_pb2.SamplingParams(
                        max_tokens=wrappers_pb2.UInt32Value(value=MAX_TOKENS), ignore_eos=True
                    ),
                )
                try:
                    responses = list(stub.Generate(request, timeout=60))
                    tokens = sum(len(r.token_ids) for r in responses)
                    self.served.append((responses[-1].worker_id, tokens))
                except grpc.RpcError as e:
                    self.failures.append(e.details())

    def __enter__(self):
        for c in self.clients:
            c.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for c in self.clients:
            c.join()


def test_a_decode_worker_serving_streams_becomes_prefill_and_back_without_a_failed_request(fleet):
    move = connector(fleet)
    assert move.current() == {"prefill": 1, "decode": 2}
    with Load(fleet) as load:
        wait_for(lambda: len({w for w, _ in load.served}) == 2, timeout_s=60, what="both decode workers serving")
        done = move.scale("prefill", 2)
        moved = next(iter(move.moving))
        assert moved in done
        wait_for(lambda: records(fleet)[moved].draining, timeout_s=10, what="the worker to drain")
        served_before = sum(w == moved for w, _ in load.served)
        wait_for(lambda: records(fleet)[moved].role == worker_pb2.ROLE_PREFILL, timeout_s=60, what="the role change")
        assert not records(fleet)[moved].draining and records(fleet)[moved].triton_model == "sim_prefill"
        assert move.current() == {"prefill": 2, "decode": 1} and move.moving == {}
        after = len(load.served)
        wait_for(lambda: len(load.served) > after + 8, timeout_s=60, what="requests after the change")
        assert all(w != moved for w, _ in load.served[after:])  # a prefill worker serves no whole request

        move.scale("decode", 2)
        wait_for(lambda: records(fleet)[moved].role == worker_pb2.ROLE_DECODE, timeout_s=60, what="the way back")
        back = len(load.served)
        wait_for(lambda: any(w == moved for w, _ in load.served[back:]), timeout_s=60, what="it serving again")
    assert not load.failures, load.failures[:3]
    assert {tokens for _, tokens in load.served} == {MAX_TOKENS}
    assert served_before > 0
    logs = fleet.worker_logs()
    assert f"worker {moved} now runs sim_prefill (ROLE_PREFILL)" in logs
    assert f"worker {moved} now runs sim_decode (ROLE_DECODE)" in logs


def test_a_decode_worker_waits_for_a_request_still_prefilling_elsewhere_before_it_changes_role(fleet):
    """The router picks the decode worker when the request comes in, but the decode phase reaches
    it only once the prefill worker is done (here ~7 s: 4,000 tokens at the simulated engine's CPU
    timing). Asked to change meanwhile, the worker drains, and waits until the routers count no
    request on it before it unloads sim_decode: the decode phase runs there, then the role changes."""
    move = connector(fleet)
    assert move.current() == {"prefill": 1, "decode": 2}
    request = inference_pb2.GenerateRequest(
        model=fleet.model,
        token_ids=inference_pb2.TokenIds(ids=[3000 + i for i in range(4000)]),  # ≥ the 2,048 threshold
        sampling=inference_pb2.SamplingParams(max_tokens=wrappers_pb2.UInt32Value(value=MAX_TOKENS), ignore_eos=True),
    )
    answer: dict = {}

    def generate() -> None:
        with grpc.insecure_channel(fleet.grpc) as channel:
            try:
                answer["responses"] = list(inference_pb2_grpc.InferenceStub(channel).Generate(request, timeout=120))
            except grpc.RpcError as e:
                answer["error"] = e.details()

    client = threading.Thread(target=generate)
    client.start()
    decode_ids = {w for w, r in records(fleet).items() if r.role == worker_pb2.ROLE_DECODE}
    picked: list[str] = []

    def routed() -> bool:
        picked[:] = [w.record.id for w in statuses(fleet) if w.record.id in decode_ids and w.in_flight]
        return bool(picked)

    wait_for(routed, timeout_s=10, what="the request routed")
    move.assign(picked[0], "sim_prefill")
    wait_for(lambda: records(fleet)[picked[0]].draining, timeout_s=10, what="the worker to drain")
    assert client.is_alive()  # the request is still prefilling on the prefill worker
    wait_for(lambda: records(fleet)[picked[0]].role == worker_pb2.ROLE_PREFILL, timeout_s=60, what="the role change")
    client.join(120)
    assert "error" not in answer, answer["error"]
    responses = answer["responses"]
    assert sum(len(r.token_ids) for r in responses) == MAX_TOKENS
    assert responses[-1].worker_id == picked[0]
    assert "no longer runs sim_decode" not in fleet.log("gateway")  # no move to another worker was needed

    move.scale("decode", 2)  # the fleet as it was
    wait_for(lambda: records(fleet)[picked[0]].role == worker_pb2.ROLE_DECODE, timeout_s=60, what="the way back")


@pytest.fixture
def planned_fleet(tmp_path_factory, sim_profile):
    # An ITL target a worker meets with one sequence only: four streams need a second decode worker.
    itl_target = EngineProfile.load(sim_profile).itl_ms(1, PROFILE_CONTEXT) * 1.02
    planner_args = (f"--connector triton --interval-s 1 --cooldown-s 0 --down-after 2 --max-replicas 3 "
                    f"--itl-ms {itl_target:.2f}")  # fmt: skip
    args = ("--engine", "sim", "--disagg", "--prefill-workers", "2", "--decode-workers", "1", "--planner",
            "--planner-profile", str(sim_profile), "--planner-args", planner_args)  # fmt: skip
    mesh = LocalMesh.start(tmp_path_factory.mktemp("planned-fleet-logs"), extra_args=args)
    mesh.wait_for_workers(3)
    yield mesh
    assert mesh.stop() == 0, mesh.log("up")


def pools(mesh) -> dict[int, int]:
    roles = [r.role for r in records(mesh).values() if not r.draining]
    return {role: roles.count(role) for role in (worker_pb2.ROLE_PREFILL, worker_pb2.ROLE_DECODE)}


def test_the_planner_moves_a_prefill_worker_to_decode_under_load_and_leaves_it_there(planned_fleet):
    assert pools(planned_fleet) == {worker_pb2.ROLE_PREFILL: 2, worker_pb2.ROLE_DECODE: 1}
    with Load(planned_fleet) as load:
        wait_for(
            lambda: pools(planned_fleet) == {worker_pb2.ROLE_PREFILL: 1, worker_pb2.ROLE_DECODE: 2},
            timeout_s=90,
            what="the planner to move a prefill worker to the decode pool",
        )
        after = len(load.served)
        wait_for(
            lambda: len({w for w, _ in load.served[after:]}) == 2, timeout_s=60, what="both decode workers serving"
        )
    assert not load.failures, load.failures[:3]
    assert {tokens for _, tokens in load.served} == {MAX_TOKENS}
    planner_log = planned_fleet.log("planner")
    assert "to move from prefill to decode" in planner_log
    # Idle, the decode pool needs one worker again: the surplus stays put instead of moving back.
    moved_lines = planner_log.count("to move from")
    # Nothing to poll for: the test is that no change comes, so it watches six planning intervals.
    for _ in range(6):
        assert pools(planned_fleet) == {worker_pb2.ROLE_PREFILL: 1, worker_pb2.ROLE_DECODE: 2}
        time.sleep(1)
    assert planned_fleet.log("planner").count("to move from") == moved_lines
