"""A client inside one of tests/multihost/'s hosts (the test process, in the root namespace, reaches
none of them): reads calls as JSON lines on stdin, `{"fn": name, "args": {...}}`, and answers each
with one line, `{"ok": result}` or `{"error": message}`. Every call shows the mesh's admin key
(KVMESH_ADMIN_KEY in its environment, tests/support/hosts.py Mesh.client_env) unless it names
another `key` ("" for none).

    KVMESH_ADMIN_KEY=... ip netns exec <host> .venv/bin/python -m tests.multihost.agent [--tls-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import grpc
import httpx
import redis
import tritonclient.grpc as triton

from kvmesh.auth import bearer
from kvmesh.v1 import (
    inference_pb2_grpc,
    kvindex_pb2,
    kvindex_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
)
from tests.support import greedy
from tests.support.hosts import admin_key, channel, headers, verify


class Agent:
    def __init__(self, tls_dir: Path | None) -> None:
        self.tls_dir = tls_dir
        self.key = admin_key()
        self.verify = verify(tls_dir)
        self.stream = None

    def metadata(self, key: str | None = None) -> tuple[tuple[str, str], ...]:
        return bearer(self.key if key is None else key)

    def headers(self, key: str | None = None) -> dict[str, str]:
        return headers(self.key if key is None else key)

    def generate(self, address: str, model: str, ids: list[int], max_tokens: int, key: str | None = None) -> dict:
        """Greedy, all `max_tokens` (ignore_eos): the answer's worker, tokens and usage."""
        with channel(address, self.tls_dir) as c:
            request = greedy.request(model, ids, max_tokens)
            replies = list(
                inference_pb2_grpc.InferenceStub(c).Generate(request, timeout=300, metadata=self.metadata(key))
            )
        return _answer(replies)

    def stream_start(self, address: str, model: str, ids: list[int], max_tokens: int) -> dict:
        """Starts the same request as a stream and returns its first message; stream_rest the others."""
        self.stream_channel = channel(address, self.tls_dir)
        self.stream = inference_pb2_grpc.InferenceStub(self.stream_channel).Generate(
            greedy.request(model, ids, max_tokens), timeout=300, metadata=self.metadata()
        )
        return _answer([next(self.stream)])

    def stream_rest(self) -> dict:
        try:
            return _answer(list(self.stream))
        finally:
            self.stream_channel.close()

    def openai(self, url: str, body: dict) -> dict:
        response = httpx.post(url, json=body, headers=self.headers(), timeout=300, verify=self.verify)
        response.raise_for_status()
        return response.json()

    def http_get(self, url: str) -> str:
        response = httpx.get(url, headers=self.headers(), timeout=30, verify=self.verify)
        response.raise_for_status()
        return response.text

    def workers(self, router: str) -> list[dict]:
        with channel(router, self.tls_dir) as c:
            request = router_pb2.WorkersRequest()
            listed = router_pb2_grpc.RouterStub(c).Workers(request, timeout=10, metadata=self.metadata()).workers
        return [
            {"id": w.record.id, "triton": w.record.triton_grpc_address, "kv_events": w.record.kv_events_endpoint,
             "kv_replay": w.record.kv_events_replay_endpoint, "metrics": w.record.triton_metrics_address,
             "in_flight": w.in_flight}
            for w in listed
        ]  # fmt: skip

    def match(self, kvindex: str, model: str, hashes: list[int]) -> dict[str, int]:
        with channel(kvindex, self.tls_dir) as c:
            request = kvindex_pb2.MatchRequest(model=model, block_hashes=hashes)
            overlaps = kvindex_pb2_grpc.KvIndexStub(c).Match(request, timeout=10, metadata=self.metadata()).overlaps
        return {o.worker_id: o.blocks for o in overlaps}

    def indexed_workers(self, kvindex: str) -> list[str]:
        with channel(kvindex, self.tls_dir) as c:
            stats = kvindex_pb2_grpc.KvIndexStub(c).Stats(
                kvindex_pb2.StatsRequest(), timeout=10, metadata=self.metadata()
            )
        return [w.worker_id for w in stats.workers if w.blocks]

    def redis_ping(self, url: str) -> str:
        """PONG, or the error Redis answered."""
        try:
            return str(redis.Redis.from_url(url, socket_timeout=5).ping())
        except redis.RedisError as e:
            return f"{type(e).__name__}: {e}"

    def triton_repository_index(self, address: str) -> str:
        """What Triton's repository API answers a client without the worker's admin key."""
        kwargs = {}
        if self.tls_dir:
            d = self.tls_dir
            kwargs = {"ssl": True, "root_certificates": str(d / "ca.crt"), "private_key": str(d / "client.key"),
                      "certificate_chain": str(d / "client.crt")}  # fmt: skip
        try:
            return f"answered: {triton.InferenceServerClient(address, **kwargs).get_model_repository_index()}"
        except triton.InferenceServerException as e:
            return f"refused: {e.message()}"

    def http_post_status(self, url: str, body: dict | None = None, key: str = "") -> str:
        """The status and body an HTTP POST gets, showing `key` (by default, no credentials)."""
        response = httpx.post(url, json=body, headers=self.headers(key), timeout=300, verify=self.verify)
        return f"{response.status_code} {response.text}"

    def rpc_status(self, address: str, service: str, key: str | None = None, certificate: bool = True) -> str:
        """The status of the router's Workers or the gateway's Models.List (`service`: router,
        gateway) showing `key`; without `certificate`, over TLS trusting the CA but showing none."""
        if certificate:
            c = channel(address, self.tls_dir)
        else:
            c = grpc.secure_channel(address, grpc.ssl_channel_credentials((self.tls_dir / "ca.crt").read_bytes()))
        with c:
            try:
                if service == "router":
                    router_pb2_grpc.RouterStub(c).Workers(
                        router_pb2.WorkersRequest(), timeout=5, metadata=self.metadata(key)
                    )
                else:
                    request = models_pb2.ModelsListRequest()
                    models_pb2_grpc.ModelsStub(c).List(request, timeout=5, metadata=self.metadata(key))
            except grpc.RpcError as e:
                return e.code().name
        return "OK"


def _answer(replies: list) -> dict:
    last = replies[-1]
    return {
        "worker_id": last.worker_id,
        "token_ids": [t for r in replies for t in r.token_ids],
        "cached_tokens": last.usage.cached_tokens,
        "completion_tokens": last.usage.completion_tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tls-dir", type=Path)
    agent = Agent(parser.parse_args().tls_dir)
    for line in sys.stdin:
        call = json.loads(line)
        try:
            answer = {"ok": getattr(agent, call["fn"])(**call["args"])}
        except Exception as e:  # noqa: BLE001 - the test reads it
            answer = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
