"""The gateway's hard input limits on a real gateway (simulated engine), set low by their
environment twins: at each limit a request is served, one over is refused with 400 (HTTP) or
INVALID_ARGUMENT (gRPC) naming the limit's flag; a body or message over the size limit gets 413 /
RESOURCE_EXHAUSTED, and a 50 MB body is refused without the gateway holding it."""

from __future__ import annotations

import socket
import threading
from urllib.parse import urlsplit

import grpc
import httpx
import pytest

from kvmesh.cli.local_mesh import LocalMesh
from kvmesh.v1 import inference_pb2, inference_pb2_grpc

MAX_BODY = 65_536
LIMITS = {"MAX_BODY_BYTES": MAX_BODY, "MAX_MESSAGES": 4, "MAX_PROMPT_CHARS": 2000, "MAX_STOP_STRINGS": 2,
          "MAX_STOP_CHARS": 8, "MAX_STOP_TOKEN_IDS": 3}  # fmt: skip
FIFTY_MB = 50 * 2**20


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    env = {f"KVMESH_GATEWAY_{name}": str(value) for name, value in LIMITS.items()}
    mesh = LocalMesh.start(tmp_path_factory.mktemp("limits-logs"), extra_args=("--engine", "sim"), env=env,
                           ready_timeout_s=300)  # fmt: skip
    mesh.wait_for_workers(1)
    yield mesh
    assert mesh.stop() == 0, mesh.log("up")


def chat(messages=1, chars=10, stop=0, stop_chars=1, stop_token_ids=0) -> dict:
    each = chars // messages
    contents = ["a" * each] * (messages - 1) + ["a" * (chars - each * (messages - 1))]
    return {"messages": [{"role": "user", "content": c} for c in contents], "max_tokens": 2,
            "stop": ["z" * stop_chars] * stop if stop else None, "stop_token_ids": [7] * stop_token_ids}  # fmt: skip


@pytest.mark.parametrize(
    "at_limit, over, flag",
    [
        (chat(messages=4), chat(messages=5), "--max-messages"),
        (chat(chars=2000), chat(chars=2001), "--max-prompt-chars"),
        (chat(stop=2), chat(stop=3), "--max-stop-strings"),
        (chat(stop=1, stop_chars=8), chat(stop=1, stop_chars=9), "--max-stop-chars"),
        (chat(stop_token_ids=3), chat(stop_token_ids=4), "--max-stop-token-ids"),
    ],
)  # fmt: skip
def test_http_at_each_limit_is_served_and_one_over_is_refused_naming_it(limited, at_limit, over, flag):
    url = f"{limited.http}/v1/chat/completions"
    served = httpx.post(url, json={"model": limited.model, **at_limit}, timeout=60)
    assert served.status_code == 200, served.text
    refused = httpx.post(url, json={"model": limited.model, **over}, timeout=60)
    assert refused.status_code == 400 and flag in refused.json()["error"]["message"], refused.text


def test_grpc_over_a_limit_is_invalid_argument_naming_it(limited):
    request = inference_pb2.ChatRequest(
        model=limited.model, messages=[inference_pb2.ChatMessage(role="user", content="hi")] * 5
    )
    with grpc.insecure_channel(limited.grpc) as channel, pytest.raises(grpc.RpcError) as refused:
        list(inference_pb2_grpc.InferenceStub(channel).Chat(request, timeout=30))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "--max-messages" in refused.value.details()


def test_grpc_over_the_size_limit_is_resource_exhausted(limited):
    request = inference_pb2.GenerateRequest(model=limited.model, text="a" * (MAX_BODY + 1))
    with grpc.insecure_channel(limited.grpc) as channel, pytest.raises(grpc.RpcError) as refused:
        list(inference_pb2_grpc.InferenceStub(channel).Generate(request, timeout=30))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize("chunked", [False, True])
def test_a_50_mb_body_is_refused_with_413_and_never_held(limited, chunked):
    (gateway,) = limited.service_processes("gateway")
    before = gateway.memory_info().rss
    status, body = post_50_mb(limited.http, chunked)
    assert status == 413 and "--max-body-bytes" in body, body
    assert gateway.memory_info().rss - before < FIFTY_MB // 5
    assert httpx.get(f"{limited.http}/health", timeout=10).status_code == 200  # and it keeps serving


def post_50_mb(base_url: str, chunked: bool) -> tuple[int, str]:
    """Sends 50 MB from a thread (the gateway stops reading at the limit, so the send stalls or
    breaks) while this thread reads the answer."""
    where = urlsplit(base_url)
    framing = b"Transfer-Encoding: chunked" if chunked else f"Content-Length: {FIFTY_MB}".encode()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n%s\r\n\r\n" % framing
    piece = b"x" * 2**20
    with socket.create_connection((where.hostname, where.port), timeout=30) as s:
        s.sendall(head)

        def pump() -> None:
            try:
                for _ in range(FIFTY_MB // len(piece)):
                    s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            except OSError:
                pass  # the gateway answered and closed

        threading.Thread(target=pump, daemon=True).start()
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            got = s.recv(65536)
            if not got:
                break
            answer += got
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.decode(errors="replace")
