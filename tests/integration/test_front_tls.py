"""TLS at the front, on real processes: a gateway started with --tls-cert/--tls-key (no --tls-ca: its
hops inside the mesh stay plain) beside a mesh of simulated workers serves the official `openai`
client over HTTPS with the dev CA and a gRPC client over TLS without a certificate of its own, and
refuses plain HTTP and plain gRPC on those ports; the REST front with -tls-cert/-tls-key answers
over HTTPS and, without -expose-internal, has no router routes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import grpc
import httpx
import openai
import pytest

from kvmesh.cli import rest_front
from kvmesh.cli.certs import write_dev_certs
from kvmesh.cli.local_mesh import LocalMesh
from kvmesh.cli.supervisor import http_ok
from kvmesh.net import free_ports
from kvmesh.tls import CA, trusting
from kvmesh.v1 import inference_pb2_grpc
from tests.support import greedy
from tests.support.spawning import service, spawn
from tests.support.waiting import wait_for


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("front-certs")
    write_dev_certs(directory, [], 1, force=False)
    return directory


@pytest.fixture(scope="module")
def ca(certs):
    return trusting(certs / f"{CA}.crt")


@pytest.fixture(scope="module")
def sim_mesh(tmp_path_factory):
    mesh = LocalMesh.start(tmp_path_factory.mktemp("front-tls-mesh-logs"), extra_args=("--engine", "sim"))
    mesh.wait_for_workers(1)
    yield mesh
    assert mesh.stop() == 0, mesh.log("up")


def stop(process: subprocess.Popen, log: Path) -> None:
    process.terminate()
    assert process.wait(30) in (0, -15), log.read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def gateway(sim_mesh, certs, ca, tmp_path_factory):
    """A second gateway of the mesh, its front under TLS: (HTTPS port, gRPC port)."""
    http_port, grpc_port = free_ports(2)
    log = tmp_path_factory.mktemp("front-tls-gateway") / "gateway.log"
    process = service(sim_mesh, log, "gateway", "--http-port", str(http_port), "--grpc-port", str(grpc_port),
                      "--router-address", sim_mesh.router, "--models", json.dumps([sim_mesh.model]),
                      "--tls-cert", str(certs / "gateway.crt"), "--tls-key", str(certs / "gateway.key"))  # fmt: skip
    try:
        wait_for(
            lambda: process.poll() is not None or http_ok(f"https://localhost:{http_port}/health", ca),
            timeout_s=120, what="the TLS gateway",
        )  # fmt: skip
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        yield http_port, grpc_port
    finally:
        stop(process, log)


def test_the_openai_client_chats_over_https_with_the_dev_ca(gateway, ca, sim_mesh):
    with httpx.Client(verify=ca) as http_client:
        client = openai.OpenAI(base_url=f"https://localhost:{gateway[0]}/v1", api_key="unused", http_client=http_client)
        chat = client.chat.completions.create(
            model=sim_mesh.model, messages=[{"role": "user", "content": "Name a colour."}], max_tokens=4
        )
    assert (chat.choices[0].finish_reason, chat.usage.completion_tokens) == ("length", 4)


def test_plain_http_to_the_tls_port_fails(gateway):
    with pytest.raises(httpx.HTTPError):  # the server reads a TLS handshake and closes the connection
        httpx.get(f"http://127.0.0.1:{gateway[0]}/health", timeout=5)


def test_an_untrusted_https_client_fails(gateway):
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"https://localhost:{gateway[0]}/health", timeout=5)  # the system's CAs, not the dev CA


def test_grpc_over_tls_without_a_client_certificate_streams_a_generate(gateway, certs, sim_mesh):
    credentials = grpc.ssl_channel_credentials(root_certificates=(certs / f"{CA}.crt").read_bytes())
    with grpc.secure_channel(f"localhost:{gateway[1]}", credentials) as channel:
        replies = list(inference_pb2_grpc.InferenceStub(channel).Generate(
            greedy.request(sim_mesh.model, [504, 3575, 282], 5), timeout=60))  # fmt: skip
    assert sum(len(r.token_ids) for r in replies) == 5
    with grpc.insecure_channel(f"127.0.0.1:{gateway[1]}") as channel, pytest.raises(grpc.RpcError) as refused:
        list(inference_pb2_grpc.InferenceStub(channel).Generate(greedy.request(sim_mesh.model, [504], 1), timeout=10))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.fixture(scope="module")
def rest_https(sim_mesh, certs, ca, tmp_path_factory):
    """The REST front over the mesh's plain services, its own listener HTTPS: its URL."""
    (port,) = free_ports(1)
    log = tmp_path_factory.mktemp("front-tls-rest") / "rest.log"
    argv = rest_front.argv(f"127.0.0.1:{port}", sim_mesh.grpc, sim_mesh.router, sim_mesh.kvindex)
    argv += [f"-tls-cert={certs / 'rest.crt'}", f"-tls-key={certs / 'rest.key'}"]
    process = spawn(argv, log)
    url = f"https://localhost:{port}"
    try:
        wait_for(lambda: process.poll() is not None or http_ok(f"{url}/healthz", ca), timeout_s=30, what="REST")
        assert process.poll() is None, log.read_text(errors="replace")
        yield url
    finally:
        stop(process, log)


@pytest.mark.skipif(rest_front.unavailable_reason() is not None, reason=str(rest_front.unavailable_reason()))
def test_the_rest_front_answers_over_https_without_internal_routes(rest_https, ca, sim_mesh):
    with httpx.Client(base_url=rest_https, verify=ca, timeout=30) as rest:
        models = rest.get("/v1/kvmesh/models")
        assert models.status_code == 200 and [m["id"] for m in models.json()["models"]] == [sim_mesh.model]
        for internal in ("/v1/router/workers", "/v1/kvindex/stats"):
            assert rest.get(internal).status_code == 404, internal
    assert httpx.get(f"{rest_https.replace('https', 'http')}/healthz", timeout=5).status_code == 400  # Go's answer
