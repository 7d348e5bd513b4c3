"""API keys across hosts, on the mesh running as an exposed one does (auth on, TLS at the front):
from the client's host, `kvmesh keys create` makes a user key through the gateway's gRPC with the
admin key, trusting the mesh's CA (it refuses to send the key in plain text off loopback); the key
is served on both fronts, a call without a key is refused (HTTP 401, gRPC UNAUTHENTICATED), and the
router on its own host refuses the user key (PERMISSION_DENIED): its RPCs are the mesh's. On the
mutual-TLS topology; the file sorts before test_disaggregated.py, which ends by replacing it."""

import sys

import pytest

from kvmesh.api_keys import PREFIX
from tests.support import prompts

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def user_key(disaggregated) -> str:
    mesh = disaggregated.mesh
    argv = [sys.executable, "-m", "kvmesh", "keys", "create", "team-multihost", "--gateway", mesh.grpc,
            "--ca", str(mesh.tls_dir / "ca.crt")]  # fmt: skip
    done = disaggregated.hosts["client"].run(argv, env=mesh.client_env)  # KVMESH_ADMIN_KEY, not a flag
    assert done.returncode == 0, done.stdout + done.stderr
    secret = done.stdout.strip()
    assert secret.startswith(PREFIX), done.stdout
    return secret


def chat(mesh) -> tuple[str, dict]:
    body = {"model": mesh.model, "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 4}
    return f"{mesh.http}/v1/chat/completions", body


def test_a_user_key_made_from_the_client_host_is_served_on_both_fronts(disaggregated, user_key):
    mesh, client = disaggregated.mesh, disaggregated.client
    url, body = chat(mesh)
    answered = client.http_post_status(url=url, body=body, key=user_key)
    assert answered.startswith("200 ") and '"completion_tokens":4' in answered.replace(" ", ""), answered
    ids = prompts.english("a user key", 40)
    answer = client.generate(address=mesh.grpc, model=mesh.model, ids=ids, max_tokens=4, key=user_key)
    assert answer["completion_tokens"] == 4


def test_no_key_is_unauthenticated_on_both_fronts(disaggregated):
    mesh, client = disaggregated.mesh, disaggregated.client
    url, body = chat(mesh)
    refused = client.http_post_status(url=url, body=body)
    assert refused.startswith("401 ") and "no API key" in refused, refused
    assert client.rpc_status(address=mesh.grpc, service="gateway", key="") == "UNAUTHENTICATED"


def test_the_router_refuses_a_user_key_and_takes_the_admin_key(disaggregated, user_key):
    mesh, client = disaggregated.mesh, disaggregated.client
    assert client.rpc_status(address=mesh.router, service="router", key=user_key) == "PERMISSION_DENIED"
    assert client.rpc_status(address=mesh.router, service="router", key="") == "UNAUTHENTICATED"
    assert client.rpc_status(address=mesh.router, service="router") == "OK"  # the admin key
