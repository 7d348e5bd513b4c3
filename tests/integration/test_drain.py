"""Graceful drain on real processes: a gateway and a router of their own beside a `kvmesh up --engine
sim` mesh (the same Redis), each sent SIGTERM while it serves. The gateway finishes its streams in
flight on both fronts, every token, refuses new requests at once (its HTTP listener closed, gRPC
UNAVAILABLE, health not serving) and exits 0; the router ends an open Session with its summary,
refuses new ones and exits 0, well within its drain timeout."""

from __future__ import annotations

import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kvmesh import auth
from kvmesh.cli.supervisor import http_ok
from kvmesh.net import free_ports
from kvmesh.v1 import inference_pb2_grpc, router_pb2, router_pb2_grpc
from tests.support import greedy, meshes
from tests.support.spawning import service
from tests.support.waiting import wait_for

# The sim engine's step is ~33 ms: a stream of ~5 s, which a SIGTERM after its first tokens lands in.
MAX_TOKENS = 150
PROMPT = [504, 3575, 282]
DRAIN_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with meshes.running(tmp_path_factory.mktemp("drain-logs"), ("--engine", "sim"), workers=1) as mesh:
        yield mesh


@pytest.fixture
def gateway(mesh, tmp_path):
    http_port, grpc_port = free_ports(2)
    log = tmp_path / "gateway.log"
    process = service(mesh, log, "gateway", "--http-port", str(http_port), "--grpc-port", str(grpc_port),
                      "--router-address", mesh.router, "--models", json.dumps([mesh.model]),
                      "--drain-timeout-s", str(DRAIN_TIMEOUT_S))  # fmt: skip
    url = f"http://127.0.0.1:{http_port}"
    try:
        wait_for(lambda: process.poll() is not None or http_ok(f"{url}/health"), timeout_s=120, what="the gateway")
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        yield process, url, f"127.0.0.1:{grpc_port}", log
    finally:
        process.kill()
        process.wait(10)


def http_refused(url: str) -> bool:
    """True once the listener is closed; a request accepted just before must be answered, not hang."""
    try:
        response = httpx.post(f"{url}/v1/completions", json={"prompt": PROMPT, "max_tokens": 1}, timeout=10)
    except httpx.ConnectError:
        return True
    assert response.status_code < 500, response.text
    return False


def test_a_gateway_sent_sigterm_mid_stream_finishes_its_streams_refuses_new_requests_and_exits_0(mesh, gateway):
    process, url, grpc_address, log = gateway
    grpc_streaming = threading.Event()

    def generate() -> int:
        with grpc.insecure_channel(grpc_address) as channel:
            tokens = 0
            for response in inference_pb2_grpc.InferenceStub(channel).Generate(
                greedy.request(mesh.model, PROMPT, MAX_TOKENS), timeout=60
            ):
                tokens += len(response.token_ids)
                grpc_streaming.set()
            return tokens

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
    with ThreadPoolExecutor(1) as pool:
        grpc_tokens = pool.submit(generate)
        stream = client.completions.create(
            model=mesh.model, prompt=PROMPT, max_tokens=MAX_TOKENS, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
        )  # fmt: skip
        chunks = [next(stream)]
        assert grpc_streaming.wait(30), "the gRPC stream did not start"
        process.send_signal(signal.SIGTERM)
        wait_for(lambda: "gateway draining" in log.read_text(), what="the drain's start")
        wait_for(lambda: http_refused(url), timeout_s=2, what="new HTTP requests refused")
        with grpc.insecure_channel(grpc_address) as channel:
            with pytest.raises(grpc.RpcError) as refused:
                list(inference_pb2_grpc.InferenceStub(channel).Generate(greedy.request(mesh.model, PROMPT, 1),
                                                                        timeout=10))  # fmt: skip
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            try:
                health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
            except grpc.RpcError as e:
                health = e.code()
            assert health != health_pb2.HealthCheckResponse.SERVING
        assert process.poll() is None, "the gateway left before its streams ended"
        chunks += list(stream)
        assert grpc_tokens.result(timeout=60) == MAX_TOKENS
    assert chunks[-1].usage.completion_tokens == MAX_TOKENS
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert process.wait(30) == 0, log.read_text(errors="replace")[-3000:]
    assert "gateway drained" in log.read_text()


@pytest.fixture
def router(mesh, tmp_path):
    (port,) = free_ports(1)
    log = tmp_path / "router.log"
    process = service(mesh, log, "router", "--port", str(port), "--drain-timeout-s", str(DRAIN_TIMEOUT_S))
    address = f"127.0.0.1:{port}"
    try:
        with grpc.insecure_channel(address) as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
        yield process, address, log
    finally:
        process.kill()
        process.wait(10)


def test_a_router_sent_sigterm_ends_its_sessions_refuses_new_ones_and_exits_0(mesh, router):
    process, address, log = router
    metadata = auth.bearer(mesh.mesh_token)
    route = router_pb2.RouteRequest(model=mesh.model, request_id="drain-1", num_tokens=len(PROMPT))
    with grpc.insecure_channel(address) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        client_done = threading.Event()

        def messages():
            # Released with the Route (applied once it is decided): the mesh's worker is left no load.
            yield router_pb2.SessionRequest(route=route, more=[router_pb2.SessionRequest(released="drain-1")])
            client_done.wait(DRAIN_TIMEOUT_S)  # the client's side stays open, as the gateway's does

        session = stub.Session(messages(), metadata=metadata, timeout=DRAIN_TIMEOUT_S)
        first = next(session)
        assert first.request_id == "drain-1" and first.route.worker.id, first
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        rest = list(session)  # ended by the router
        client_done.set()
        assert [r.summary for r in rest if r.HasField("summary")] == [router_pb2.SessionSummary(routed=1, released=1)]
        with pytest.raises(grpc.RpcError) as refused:
            next(stub.Session(iter([router_pb2.SessionRequest(route=route)]), metadata=metadata, timeout=10))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert process.wait(DRAIN_TIMEOUT_S) == 0, log.read_text(errors="replace")[-3000:]
    assert time.monotonic() - sent < DRAIN_TIMEOUT_S / 4
