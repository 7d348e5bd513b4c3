"""Clients that stop reading a stream, on a sim mesh whose gateway gives a write WRITE_TIMEOUT_S:
each is cut off, its engine request aborted and its router slot freed long before its answer could
have been written, while another client is served meanwhile; on both fronts."""

from __future__ import annotations

import json
import re
import socket

import grpc
import httpx
import pytest
from google.protobuf.wrappers_pb2 import UInt32Value

from kvmesh.cli.local_mesh import LocalMesh
from kvmesh.v1 import inference_pb2, inference_pb2_grpc, router_pb2, router_pb2_grpc
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

WRITE_TIMEOUT_S = 2.0
# Far more than a socket's buffers hold (the kernel takes up to 4 MiB of a stopped HTTP client's
# stream, gRPC's window 64 KiB without BDP probing): the answer cannot be written before the cut.
LONG = 120_000
ENGINE_ARGS = {"timing": {"speedup": 1000}}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    env = {"KVMESH_GATEWAY_STREAM_WRITE_TIMEOUT_S": str(WRITE_TIMEOUT_S)}
    args = ("--engine", "sim", "--engine-args", json.dumps(ENGINE_ARGS))
    mesh = LocalMesh.start(tmp_path_factory.mktemp("slow-clients-logs"), extra_args=args, env=env)
    mesh.wait_for_workers(1)
    yield mesh
    assert mesh.stop() == 0, mesh.log("up")


def in_flight(mesh: LocalMesh) -> int:
    with grpc.insecure_channel(mesh.router) as ch:
        workers = router_pb2_grpc.RouterStub(ch).Workers(router_pb2.WorkersRequest()).workers
    return sum(w.in_flight for w in workers)


def cut_off(mesh: LocalMesh, front: str) -> float:
    wanted = f'kvmesh_gateway_requests_total{{front="{front}",status="slow_client"}} '
    for line in httpx.get(f"{mesh.http}/metrics").text.splitlines():
        if line.startswith(wanted):
            return float(line.removeprefix(wanted))
    return 0.0


def served_meanwhile(mesh: LocalMesh) -> None:
    body = {"model": mesh.model, "prompt": "Another client", "max_tokens": 8}
    reply = httpx.post(f"{mesh.http}/v1/completions", json=body, timeout=30)
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 8


def aborted(mesh: LocalMesh, request_id: str) -> bool:
    return f"request {request_id}: cancelled by the client, aborted in the engine" in mesh.worker_logs()


def test_an_sse_client_that_stops_reading_is_cut_off_and_its_slot_freed(mesh):
    body = {"model": mesh.model, "prompt": "Never read", "max_tokens": LONG, "ignore_eos": True, "stream": True}
    payload = json.dumps(body).encode()
    port = int(mesh.http.rsplit(":", 1)[1])
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the gateway's writes back up
        s.connect(("127.0.0.1", port))
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        head = b""
        while b'"id": "cmpl-' not in head or not re.search(rb'"id": "(cmpl-[0-9a-f]+)"', head):
            head += s.recv(1024)
        request_id = re.search(rb'"id": "(cmpl-[0-9a-f]+)"', head).group(1).decode()
        assert head.startswith(b"HTTP/1.1 200")
        # From here on the client reads nothing, and keeps its connection open.
        assert in_flight(mesh) == 1
        served_meanwhile(mesh)
        wait_for(lambda: in_flight(mesh) == 0, timeout_s=30, what="the router releasing the stopped stream")
        assert cut_off(mesh, "http") == 1
        wait_for(lambda: aborted(mesh, request_id), what="the engine aborting it")
        # The gateway closed the connection: what the kernel still holds, then the end.
        s.settimeout(10)
        while s.recv(65536):
            pass
    assert f"request {request_id}: the client read nothing for {WRITE_TIMEOUT_S:g}s; cancelled" in mesh.log("gateway")


def test_a_grpc_client_that_stops_reading_is_cut_off_and_its_slot_freed(mesh):
    # No BDP probing: the stream's window stays at gRPC's initial 64 KiB instead of growing to MiBs.
    with grpc.insecure_channel(mesh.grpc, options=[("grpc.http2.bdp_probe", 0)]) as channel:
        call = inference_pb2_grpc.InferenceStub(channel).Generate(
            inference_pb2.GenerateRequest(
                model=mesh.model,
                text="Never read either",
                request_id="stops-reading",
                sampling=inference_pb2.SamplingParams(max_tokens=UInt32Value(value=LONG), ignore_eos=True),
            )
        )
        assert next(call).request_id == "stops-reading"
        # From here on the client reads nothing.
        assert in_flight(mesh) == 1
        served_meanwhile(mesh)
        wait_for(lambda: in_flight(mesh) == 0, timeout_s=30, what="the router releasing the stopped stream")
        assert cut_off(mesh, "grpc") == 1
        run_id = re.compile(r"request (stops-reading\.[0-9a-f]+): the client read nothing for 2s; cancelled")
        found = run_id.search(mesh.log("gateway"))
        assert found, mesh.log("gateway")[-3000:]
        wait_for(lambda: aborted(mesh, found.group(1)), what="the engine aborting it")
        # Reading again, the client gets what gRPC held, then the cut's status.
        with pytest.raises(grpc.RpcError) as ended:
            for _ in call:
                pass
        assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "read nothing for 2s" in ended.value.details()
