"""Concurrency, client disconnects and the router's bookkeeping, on the real engine."""

import asyncio
import re

import grpc
import httpx
import openai

from kvmesh.v1 import router_pb2, router_pb2_grpc
from tests.support.waiting import wait_for


def in_flight(mesh) -> int:
    with grpc.insecure_channel(mesh.router) as ch:
        workers = router_pb2_grpc.RouterStub(ch).Workers(router_pb2.WorkersRequest()).workers
    return sum(w.in_flight for w in workers)


async def test_two_concurrent_requests_both_complete(mesh):
    client = openai.AsyncOpenAI(base_url=f"{mesh.http}/v1", api_key="unused", max_retries=0)

    async def ask(question):
        reply = await client.chat.completions.create(
            model=mesh.model, messages=[{"role": "user", "content": question}], max_tokens=16
        )
        return reply.choices[0].message.content

    answers = await asyncio.gather(ask("What is 2 + 2?"), ask("Name a fruit."))
    assert all(a.strip() for a in answers)
    await client.close()


def test_client_disconnect_mid_stream_aborts_the_engine_request(mesh):
    body = {
        "model": mesh.model,
        "messages": [{"role": "user", "content": "Write a very long story."}],
        "max_tokens": 3000,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.Client(base_url=mesh.http, timeout=60) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            request_id = re.search(r'"id": "chatcmpl-([0-9a-f]+)"', first).group(1)
            for _ in range(5):
                next(lines)
        # The response is closed here, long before 3000 tokens.
    wait_for(lambda: f"request chatcmpl-{request_id}: cancelled by the client, aborted in the engine"
             in mesh.worker_logs(), what="the engine abort")  # fmt: skip
    wait_for(lambda: in_flight(mesh) == 0, what="the router releasing the request")
    # The engine is free: a short request is served at once.
    with httpx.Client(base_url=mesh.http, timeout=60) as http:
        ok = http.post("/v1/chat/completions", json={**body, "max_tokens": 4, "stream": False})
    assert ok.status_code == 200


def test_grpc_cancel_aborts_too(mesh):
    from kvmesh.v1 import inference_pb2, inference_pb2_grpc

    with grpc.insecure_channel(mesh.grpc) as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        call = stub.Generate(
            inference_pb2.GenerateRequest(
                model=mesh.model,
                text="Once upon a time",
                request_id="grpc-cancel-1",
                sampling=inference_pb2.SamplingParams(ignore_eos=True),
            )
        )
        next(call)
        call.cancel()
    # The mesh runs it as grpc-cancel-1.<its own id>: a client's id is a label, never the key.
    aborted = re.compile(r"request grpc-cancel-1\.[0-9a-f]+: cancelled by the client, aborted in the engine")
    wait_for(lambda: aborted.search(mesh.worker_logs()), what="the engine abort")
    wait_for(lambda: in_flight(mesh) == 0, what="the router releasing the request")
