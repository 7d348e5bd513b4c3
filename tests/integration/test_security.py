"""Locked-down internals, on real components: Redis refuses a client without the password, and with
TLS a client without TLS; `kvmesh up --tls-dir` serves OpenAI requests over HTTPS and REST requests
through every gRPC hop under mutual TLS while the gateway (both ports) and the router refuse a caller
without a certificate of the mesh's CA; a worker's Triton refuses its admin APIs to anyone without
the worker's key."""

from __future__ import annotations

import asyncio
import dataclasses

import grpc
import httpx
import pytest
import redis
import tritonclient.grpc.aio as triton_aio
from tritonclient.utils import InferenceServerException

from kvmesh import registry
from kvmesh.cli.local_mesh import LocalMesh
from kvmesh.cli.supervisor import http_ok
from kvmesh.replay.runner import ReplayOptions, replay
from kvmesh.replay.traces import TraceRequest
from kvmesh.tls import MutualTls, trusting
from kvmesh.v1 import router_pb2, router_pb2_grpc
from tests.support.certs import ours_and_another_ca
from tests.support.redis_servers import redis_with
from tests.support.waiting import wait_for

__all__ = ["redis_with"]  # the fixture

HEALTH = "/grpc.health.v1.Health/Check"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return ours_and_another_ca(tmp_path_factory)


def test_redis_with_a_password_refuses_a_client_without_it(redis_with):
    server = redis_with(password="the-password")
    bare = redis.Redis(port=server.port, protocol=2)
    with pytest.raises(redis.AuthenticationError, match="Authentication required"):  # Redis said NOAUTH
        bare.ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=server.port, password="not-it").ping()
    assert redis.Redis.from_url(server.url).ping()


def test_redis_with_tls_answers_a_client_with_its_own_certificate_only(redis_with, certs):
    server = redis_with(password="pw", tls=MutualTls.in_dir(certs[0], "redis"))
    assert server.url.startswith("rediss://") and "redis.key" not in server.url  # Redis's key stays with Redis
    client_tls = MutualTls.in_dir(certs[0], "client")

    async def ping(url: str, tls: MutualTls | None) -> bool:
        client = registry.connect(url, timeout_s=2, tls=tls)
        try:
            return await client.ping()
        finally:
            await client.aclose()

    assert asyncio.run(ping(server.url, client_tls))
    with pytest.raises(redis.ConnectionError):
        asyncio.run(ping(server.url, None))  # TLS, but no certificate to show
    with pytest.raises(redis.ConnectionError):
        asyncio.run(ping(server.url, MutualTls.in_dir(certs[1], "client")))  # another CA's
    with pytest.raises(redis.ConnectionError):
        asyncio.run(ping(f"redis://:pw@127.0.0.1:{server.port}/0", None))


@pytest.fixture(scope="module")
def secure(certs, tmp_path_factory):
    mesh = LocalMesh.start(
        tmp_path_factory.mktemp("tls-mesh-logs"), extra_args=("--engine", "sim", "--rest-internal"), tls_dir=certs[0],
        ready_timeout_s=300,
    )  # fmt: skip
    mesh.wait_for_workers(1)
    rest_ca = trusting(mesh.tls.ca)  # the REST front serves HTTPS with its certificate of the mesh's CA
    wait_for(lambda: http_ok(f"{mesh.rest}/healthz", rest_ca), timeout_s=30, what="the REST front")  # started last
    yield mesh
    assert mesh.stop() == 0, mesh.log("up")


def test_an_openai_request_crosses_every_hop_under_mutual_tls(secure):
    own = secure.tls.redis_options()
    assert secure.redis_url.startswith("rediss://") and redis.Redis.from_url(secure.redis_url, **own).ping()
    body = {"model": secure.model, "prompt": "The capital of France is", "max_tokens": 4}
    answer = httpx.post(f"{secure.http}/v1/completions", json=body, timeout=60, verify=secure.http_verify())
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["completion_tokens"] == 4


def test_the_gateways_https_port_refuses_a_client_without_a_certificate_of_the_mesh(secure, certs):
    assert secure.http.startswith("https://")
    health = f"{secure.http}/health"
    assert httpx.get(health, verify=secure.http_verify(), timeout=10).status_code == 200
    # Trusting the mesh's CA, without a certificate, and with one of another CA.
    another_ca = dataclasses.replace(MutualTls.in_dir(certs[1], "client"), ca=secure.tls.ca)
    for verify in (trusting(secure.tls.ca), another_ca.client_ssl_context()):
        with pytest.raises(httpx.HTTPError):
            httpx.get(health, verify=verify, timeout=10)
    with pytest.raises(httpx.HTTPError):  # plain HTTP to the TLS port
        httpx.get(health.replace("https://", "http://"), timeout=10)


def test_rest_reaches_the_services_with_its_certificate(secure):
    with httpx.Client(base_url=secure.rest, verify=trusting(secure.tls.ca), timeout=60) as rest:
        workers = rest.get("/v1/router/workers")
        assert workers.status_code == 200, workers.text
        assert len(workers.json()["workers"]) == 1
        assert rest.get("/v1/kvindex/stats").status_code == 200
        body = {"model": secure.model, "token_ids": {"ids": [504, 3575, 282]}, "sampling": {"max_tokens": 3}}
        generated = rest.post("/v1/kvmesh/generate", json=body)
    assert generated.status_code == 200 and '"FINISH_REASON_' in generated.text, generated.text


def test_a_trace_replays_with_the_client_certificate_only(secure):
    requests = [TraceRequest(index=i, arrival_s=0.0, input_length=40, output_length=3) for i in range(2)]
    options = ReplayOptions(time_scale=0.0, timeout_s=60)
    served, _ = asyncio.run(replay(secure.grpc, secure.model, requests, options, tls=secure.tls))
    assert [o.output_tokens for o in served] == [3, 3] and not any(o.error for o in served)
    refused_all, _ = asyncio.run(replay(secure.grpc, secure.model, requests, options))
    assert all(o.error for o in refused_all)


def refused(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.RpcError:
    channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    with channel, pytest.raises(grpc.RpcError) as failed:
        channel.unary_unary(HEALTH)(b"", timeout=5)
    return failed.value


@pytest.mark.parametrize("service", ["grpc", "router"])
def test_a_caller_without_a_certificate_of_the_mesh_is_refused(secure, certs, service):
    address = getattr(secure, service)
    ca = (certs[0] / "ca.crt").read_bytes()
    other = MutualTls.in_dir(certs[1], "client")
    no_certificate = grpc.ssl_channel_credentials(root_certificates=ca)
    another_ca = grpc.ssl_channel_credentials(ca, other.key.read_bytes(), other.cert.read_bytes())
    for credentials in (None, no_certificate, another_ca):
        assert refused(address, credentials).code() == grpc.StatusCode.UNAVAILABLE
    with secure.channel(address) as channel:  # and the mesh's client certificate is served
        assert channel.unary_unary(HEALTH)(b"", timeout=5) is not None


def test_a_workers_triton_refuses_a_caller_without_a_certificate_and_its_admin_apis_without_the_key(secure):
    with secure.channel(secure.router) as channel:
        (worker,) = router_pb2_grpc.RouterStub(channel).Workers(router_pb2.WorkersRequest(), timeout=5).workers
    address = worker.record.triton_grpc_address
    assert refused(address, None).code() == grpc.StatusCode.UNAVAILABLE

    async def try_admin() -> list[str]:
        # The mesh's own certificate gets through TLS, so what stops these calls is the missing key.
        client = triton_aio.InferenceServerClient(address, creds=secure.tls.channel_credentials())
        refusals = []
        try:
            assert await client.is_server_live()
            for call in (client.get_model_repository_index(), client.load_model("sim"), client.unload_model("sim")):
                with pytest.raises(InferenceServerException) as failed:
                    await call
                refusals.append(failed.value.message())
        finally:
            await client.close()
        return refusals

    for message in asyncio.run(try_admin()):
        assert "restricted" in message and "kvmesh-admin-key" in message, message
