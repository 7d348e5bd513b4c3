"""Role changes on running Triton workers (the planner's triton connector), on simulated
prefill/decode workers with real Triton, router, gateway and Redis: a decode worker serving
streams is asked to become a prefill worker; it drains (the router sends it nothing new, its
streams finish), swaps its model through Triton's repository API and registers as prefill —
and no request fails or loses a token. Then it comes back."""

import asyncio
import threading

import grpc
import pytest
from google.protobuf import wrappers_pb2

from kvmesh import registry
from kvmesh.cli.local_mesh import LocalMesh
from kvmesh.v1 import inference_pb2, inference_pb2_grpc, router_pb2, router_pb2_grpc, worker_pb2
from services.planner.connectors.triton import TritonConnector
from tests.support.waiting import wait_for

MAX_TOKENS = 48


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    args = ("--engine", "sim", "--disagg", "--prefill-workers", "1", "--decode-workers", "2")
    mesh = LocalMesh.start(tmp_path_factory.mktemp("role-change-logs"), extra_args=args)
    mesh.wait_for_workers(3)
    yield mesh
    assert mesh.stop() == 0, mesh.log("up")


def records(mesh) -> dict[str, worker_pb2.WorkerRecord]:
    with grpc.insecure_channel(mesh.router) as channel:
        workers = router_pb2_grpc.RouterStub(channel).Workers(router_pb2.WorkersRequest(), timeout=5).workers
    return {w.record.id: w.record for w in workers}


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
