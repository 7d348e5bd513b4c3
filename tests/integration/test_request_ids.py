"""The mesh names every request itself; a client's request_id is only a label, echoed back. Two
clients that chose the same id at once, on gRPC and on REST, each get their own whole answer (the
sim engine's tokens are a function of the prompt: the same as when each ran alone), and cancelling
one leaves the other running to its end. Before #28 the id keyed the router's and the engines'
bookkeeping: the second was refused as already running, or got the first's tokens."""

from __future__ import annotations

import asyncio
import json
import re

import grpc
import httpx
import pytest
from google.protobuf.wrappers_pb2 import UInt32Value

from kvmesh.cli.local_mesh import LocalMesh
from kvmesh.v1 import inference_pb2, inference_pb2_grpc
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

SAME = "same-id"
PROMPTS = ("The first client's prompt", "A second, different prompt")
TOKENS = 200
# A step of about 3 ms: 200 tokens take long enough for the two streams to overlap.
ENGINE_ARGS = {"timing": {"speedup": 10}}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    args = ("--engine", "sim", "--engine-args", json.dumps(ENGINE_ARGS))
    mesh = LocalMesh.start(tmp_path_factory.mktemp("request-ids-logs"), extra_args=args)
    mesh.wait_for_workers(1)
    yield mesh
    assert mesh.stop() == 0, mesh.log("up")


def request(mesh: LocalMesh, prompt: str) -> inference_pb2.GenerateRequest:
    sampling = inference_pb2.SamplingParams(max_tokens=UInt32Value(value=TOKENS), ignore_eos=True)
    return inference_pb2.GenerateRequest(model=mesh.model, text=prompt, request_id=SAME, sampling=sampling)


async def grpc_tokens(mesh: LocalMesh, prompt: str) -> list[int]:
    async with grpc.aio.insecure_channel(mesh.grpc) as channel:
        tokens = []
        async for response in inference_pb2_grpc.InferenceStub(channel).Generate(request(mesh, prompt)):
            assert response.request_id == SAME
            tokens += response.token_ids
        return tokens


async def rest_tokens(mesh: LocalMesh, prompt: str) -> list[int]:
    body = {"model": mesh.model, "text": prompt, "request_id": SAME,
            "sampling": {"max_tokens": TOKENS, "ignore_eos": True}}  # fmt: skip
    tokens = []
    async with httpx.AsyncClient(base_url=mesh.rest, timeout=60) as client:
        async with client.stream("POST", "/v1/kvmesh/generate", json=body) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.strip():
                    result = json.loads(line)["result"]
                    assert result["request_id"] == SAME
                    tokens += result.get("token_ids", [])
    return tokens


@pytest.fixture(scope="module")
async def alone(mesh) -> list[list[int]]:
    """Each prompt's answer when it runs alone."""
    answers = [await grpc_tokens(mesh, prompt) for prompt in PROMPTS]
    assert all(len(a) == TOKENS for a in answers) and answers[0] != answers[1]
    return answers


async def test_two_grpc_clients_with_the_same_id_each_get_their_own_answer(mesh, alone):
    together = await asyncio.gather(*(grpc_tokens(mesh, prompt) for prompt in PROMPTS))
    assert together == alone


async def test_the_same_id_on_grpc_and_rest_at_once(mesh, alone):
    together = await asyncio.gather(grpc_tokens(mesh, PROMPTS[0]), rest_tokens(mesh, PROMPTS[1]))
    assert together == alone


async def test_cancelling_one_of_two_with_the_same_id_leaves_the_other_whole(mesh, alone):
    async with grpc.aio.insecure_channel(mesh.grpc) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        first, second = (stub.Generate(request(mesh, prompt)) for prompt in PROMPTS)
        await first.read()
        kept = list((await second.read()).token_ids)
        first.cancel()
        while (response := await second.read()) is not grpc.aio.EOF:
            kept += response.token_ids
    assert kept == alone[1]
    # Only the cancelled one was aborted in the engine, under the mesh's name for it.
    aborts = re.compile(rf"request {SAME}\.[0-9a-f]+: cancelled by the client, aborted in the engine")
    wait_for(lambda: aborts.search(mesh.worker_logs()), what="the engine aborting the cancelled one")
    assert len(aborts.findall(mesh.worker_logs())) == 1
