"""The front door on real processes: `kvmesh up --engine sim --auth on` (real Triton, gateway,
router, kvindex, Redis, Go REST front). Keys are made with `kvmesh keys create`, as an operator
would. Who gets in (401 / UNAUTHENTICATED, 403 / PERMISSION_DENIED on every front), the quotas
from real token counts tripping at the right count with Retry-After, one quota for two gateways,
and the usage each key leaves behind."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import grpc
import httpx
import openai
import pytest
import redis

from kvmesh import auth, quota
from kvmesh.cli.local_mesh import LocalMesh
from kvmesh.cli.supervisor import http_ok
from kvmesh.net import free_ports
from kvmesh.v1 import (
    inference_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    kvindex_pb2,
    kvindex_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
)
from tests.support import greedy
from tests.support.waiting import wait_for

HELLO = [{"role": "user", "content": "Say hello to the front door."}]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    # --auth on although every port is loopback: what a mesh bound to a public address does by default.
    mesh = LocalMesh.start(tmp_path_factory.mktemp("front-door-logs"), extra_args=("--engine", "sim", "--auth", "on"))
    mesh.wait_for_workers(1)
    yield mesh
    assert mesh.stop() == 0, mesh.log("up")


def kvmesh_keys(mesh: LocalMesh, *args: str, admin_key: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, auth.ADMIN_KEY_ENV: mesh.admin_key if admin_key is None else admin_key}
    return subprocess.run([sys.executable, "-m", "kvmesh", "keys", *args, "--gateway", mesh.grpc],
                          capture_output=True, text=True, timeout=60, env=env)  # fmt: skip


def make_key(mesh: LocalMesh, name: str, *flags: str) -> str:
    made = kvmesh_keys(mesh, "create", name, *flags)
    assert made.returncode == 0, made.stdout + made.stderr
    return made.stdout.strip()


def chat(mesh: LocalMesh, key: str | None, max_tokens: int = 2, **extra) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"model": mesh.model, "messages": HELLO, "max_tokens": max_tokens, **extra}
    return httpx.post(f"{mesh.http}/v1/chat/completions", json=body, headers=headers, timeout=60)


def grpc_code(call, *args) -> grpc.StatusCode:
    try:
        call(*args)
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def generate(mesh: LocalMesh, key: str | None, max_tokens: int = 2):
    with mesh.channel(mesh.grpc) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        request = greedy.request(mesh.model, [504, 3575, 282], max_tokens)
        return list(stub.Generate(request, timeout=60, metadata=auth.bearer(key or "")))


def test_no_key_a_wrong_key_and_a_revoked_key_are_refused_on_every_front(mesh):
    key = make_key(mesh, "short-lived")
    assert chat(mesh, key).status_code == 200
    kvmesh_keys(mesh, "revoke", "short-lived").check_returncode()
    time.sleep(1.2)  # a gateway trusts a lookup for a second
    for bad in (None, "kvm-not-a-key", key):
        refused = chat(mesh, bad)
        assert refused.status_code == 401, refused.text
        assert refused.headers["www-authenticate"] == "Bearer"
        assert refused.json()["error"]["type"] == "authentication_error"
        assert grpc_code(generate, mesh, bad) == grpc.StatusCode.UNAUTHENTICATED
        headers = {"Authorization": f"Bearer {bad}"} if bad else {}
        rest = httpx.get(f"{mesh.rest}/v1/kvmesh/models", headers=headers, timeout=10)
        assert rest.status_code == 401, rest.text


def test_the_openai_client_with_a_key_is_served_and_told_its_limits(mesh):
    key = make_key(mesh, "team-a", "--rpm", "600", "--tpm", "200000")
    client = openai.OpenAI(base_url=f"{mesh.http}/v1", api_key=key)
    raw = client.chat.completions.with_raw_response.create(model=mesh.model, messages=HELLO, max_tokens=3)
    assert raw.parse().usage.completion_tokens == 3
    assert raw.headers["x-ratelimit-limit-requests"] == "600"
    assert raw.headers["x-ratelimit-limit-tokens"] == "200000"
    assert float(raw.headers["x-kvmesh-queue-ms"]) >= 0
    streamed = client.chat.completions.create(model=mesh.model, messages=HELLO, max_tokens=3, stream=True)
    assert sum(1 for chunk in streamed if chunk.choices and chunk.choices[0].delta.content is not None) >= 1
    assert [m.id for m in client.models.list()] == [mesh.model]
    assert sum(len(r.token_ids) for r in generate(mesh, key, 4)) == 4


def test_admin_rpcs_need_an_admin_key(mesh):
    user = make_key(mesh, "not-an-admin")
    with mesh.channel(mesh.kvindex) as kvindex, mesh.channel(mesh.router) as router, mesh.channel(mesh.grpc) as gw:
        calls = {
            "Purge": lambda md: kvindex_pb2_grpc.KvIndexStub(kvindex).Purge(
                kvindex_pb2.PurgeRequest(worker_id="nobody"), timeout=10, metadata=md),
            "Workers": lambda md: router_pb2_grpc.RouterStub(router).Workers(
                router_pb2.WorkersRequest(), timeout=10, metadata=md),
            "Keys.List": lambda md: keys_pb2_grpc.KeysStub(gw).List(
                keys_pb2.KeysListRequest(), timeout=10, metadata=md),
        }  # fmt: skip
        for name, call in calls.items():
            assert grpc_code(call, auth.bearer(user)) == grpc.StatusCode.PERMISSION_DENIED, name
            assert grpc_code(call, auth.bearer(mesh.admin_key)) == grpc.StatusCode.OK, name
    listed = kvmesh_keys(mesh, "list", admin_key=user)
    assert listed.returncode == 1 and "needs an admin key" in listed.stdout
    rest = httpx.get(f"{mesh.rest}/v1/admin/keys", headers={"Authorization": f"Bearer {user}"}, timeout=10)
    assert rest.status_code == 403, rest.text
    assert httpx.get(f"{mesh.rest}/v1/router/workers", timeout=10).status_code == 404  # not without --rest-internal


def test_a_key_uses_only_its_models(mesh):
    key = make_key(mesh, "other-models", "--models", "some-other-model")
    refused = chat(mesh, key)
    assert refused.status_code == 403 and refused.json()["error"]["param"] == "model"
    listed = httpx.get(f"{mesh.http}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert listed.json()["data"] == []


def test_requests_per_minute_trip_at_one_over_with_retry_after(mesh):
    key = make_key(mesh, "rpm-3", "--rpm", "3")
    assert [chat(mesh, key).status_code for _ in range(3)] == [200] * 3
    refused = chat(mesh, key)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(grpc.RpcError) as over:
        generate(mesh, key)
    assert over.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert int(dict(over.value.trailing_metadata())["retry-after"]) >= 1


def test_tokens_per_minute_count_the_real_prompt_and_completion_tokens(mesh):
    measure = make_key(mesh, "measure")
    prompt_tokens = chat(mesh, measure, max_tokens=1).json()["usage"]["prompt_tokens"]  # the tokenizer's count
    cost = prompt_tokens + 1  # and one completion token
    key = make_key(mesh, "tpm-3x", "--tpm", str(3 * cost))
    # Three requests use the minute's tokens exactly; the refill meanwhile is far below a prompt.
    assert [chat(mesh, key, max_tokens=1, ignore_eos=True).status_code for _ in range(3)] == [200] * 3
    refused = chat(mesh, key, max_tokens=1)
    assert refused.status_code == 429, refused.text
    assert "tokens per minute" in refused.json()["error"]["message"]
    assert int(refused.headers["x-ratelimit-remaining-tokens"]) < prompt_tokens


async def _stream_long(mesh: LocalMesh, key: str, client: httpx.AsyncClient) -> int:
    body = {"model": mesh.model, "messages": HELLO, "max_tokens": 64, "ignore_eos": True, "stream": True}
    async with client.stream("POST", f"{mesh.http}/v1/chat/completions", json=body,
                             headers={"Authorization": f"Bearer {key}"}) as response:  # fmt: skip
        await response.aread()
        return response.status_code


def test_concurrency_trips_at_one_over_and_frees_when_a_request_ends(mesh):
    key_name = "two-at-once"
    key = make_key(mesh, key_name, "--max-concurrency", "2")

    async def run() -> tuple[list[int], int]:
        async with httpx.AsyncClient(timeout=60) as client:
            long = [asyncio.create_task(_stream_long(mesh, key, client)) for _ in range(2)]
            # Both admitted (their leases in the key's quota); 64 tokens take the sim engine about 2 s.
            leases = redis.Redis.from_url(mesh.redis_url)
            await asyncio.to_thread(wait_for, lambda: leases.zcard(quota.keys(key_name)[1]) == 2, 10, "two admitted")
            leases.close()
            third = await asyncio.to_thread(chat, mesh, key)
            return await asyncio.gather(*long), third.status_code

    long_statuses, third = asyncio.run(run())
    assert (long_statuses, third) == ([200, 200], 429)
    assert chat(mesh, key).status_code == 200


@pytest.fixture(scope="module")
def second_gateway(mesh, tmp_path_factory):
    """Another gateway of the same mesh (its own process and ports, the same Redis and router)."""
    http_port, grpc_port = free_ports(2)
    log = tmp_path_factory.mktemp("second-gateway") / "gateway.log"
    argv = [sys.executable, "-m", "services.gateway", "--host", "127.0.0.1", "--auth", "on", "--http-port",
            str(http_port), "--grpc-port", str(grpc_port), "--router-address", mesh.router, "--models",
            json.dumps([mesh.model])]  # fmt: skip
    env = {**os.environ, "REDIS_URL": mesh.redis_url, auth.MESH_TOKEN_ENV: mesh.mesh_token}
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{http_port}"
    try:
        wait_for(lambda: process.poll() is not None or http_ok(f"{url}/health"), timeout_s=120, what="gateway 2")
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        yield url
    finally:
        process.terminate()
        process.wait(30)


def test_two_gateways_enforce_one_quota(mesh, second_gateway):
    key = make_key(mesh, "shared-rpm-4", "--rpm", "4")
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": mesh.model, "messages": HELLO, "max_tokens": 2}
    statuses = []
    for url in (mesh.http, second_gateway) * 3:  # alternating: two each before the fifth
        statuses.append(httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60).status_code)
    assert statuses == [200, 200, 200, 200, 429, 429]


def fcalls_for(mesh: LocalMesh, key: str, n: int) -> int:
    """Redis function calls made by the mesh while `key` sends `n` requests one after another."""
    client = redis.Redis.from_url(mesh.redis_url)
    before = client.info("commandstats")["cmdstat_fcall"]["calls"]
    for _ in range(n):
        assert chat(mesh, key).status_code == 200
    return client.info("commandstats")["cmdstat_fcall"]["calls"] - before


def test_a_busy_keys_requests_make_no_quota_call_each(mesh):
    busy = make_key(mesh, "busy", "--rpm", "6400", "--tpm", "10000000", "--max-concurrency", "640")
    small = make_key(mesh, "small", "--rpm", "63")  # under 64: each request admitted and released in Redis
    fcalls_for(mesh, busy, 2)  # the first slice
    # Routing makes the same calls for both; the small key's quota adds two a request.
    assert fcalls_for(mesh, busy, 10) <= fcalls_for(mesh, small, 10) - 10


def test_two_gateways_leasing_slices_never_pass_a_limit(mesh, second_gateway):
    # 64 a minute: slices of one request, granted until a quarter is left; then each asks Redis.
    key = make_key(mesh, "sliced", "--rpm", "64")
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": mesh.model, "messages": HELLO, "max_tokens": 2}
    statuses = []
    start = time.monotonic()
    for url in (mesh.http, second_gateway) * 40:
        statuses.append(httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60).status_code)
    refilled = int((time.monotonic() - start) * 64 / 60) + 1
    # Each gateway's slice holds at most one request when the other is refused.
    assert 64 - 2 <= statuses.count(200) <= 64 + refilled, statuses
    # Both gateways refused once the minute's budget was spent (a refill may still let one through later).
    assert 429 in statuses[0::2] and 429 in statuses[1::2], statuses

    def requests_in_usage() -> int | None:
        shown = kvmesh_keys(mesh, "usage", "--name", "sliced")
        row = next((line for line in shown.stdout.splitlines() if "sliced" in line), None)
        return row and [int(x) for x in row.replace("│", " ").split() if x.isdigit()][0]

    # Slices' usage is recorded at their next renewal, within a second.
    wait_for(lambda: requests_in_usage() == statuses.count(200), 15, "the slices' usage recorded")


def test_usage_is_recorded_per_key_and_model_and_counted_in_metrics(mesh):
    key = make_key(mesh, "metered")
    answers = [chat(mesh, key, max_tokens=3, ignore_eos=True).json()["usage"] for _ in range(2)]
    shown = kvmesh_keys(mesh, "usage", "--name", "metered")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    row = next(line for line in shown.stdout.splitlines() if "metered" in line)
    figures = [int(x) for x in row.replace("│", " ").split() if x.isdigit()]
    assert figures[:2] == [2, sum(a["prompt_tokens"] for a in answers)]
    assert figures[-1] == 6  # completion tokens
    metrics = httpx.get(f"{mesh.http}/metrics", timeout=10).text
    assert 'kvmesh_gateway_key_requests_total{key="metered",status="200"} 2.0' in metrics
    assert 'kvmesh_gateway_key_tokens_total{key="metered",kind="completion"} 6.0' in metrics
