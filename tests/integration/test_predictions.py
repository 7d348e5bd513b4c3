"""Routing checked against reality on the real 2-worker vLLM mesh: the router's predicted cached
tokens meet vLLM's reported ones at each release, and `Explain` and the router's metrics show it.

- A repeated prompt is predicted cached and found cached: error 0, no misprediction.
- `over`: the index claims blocks the engine does not hold, which is what an eviction whose
  events kvindex has not applied yet leaves. A real eviction is no deterministic way there: vLLM's
  KV cache holds thousands of blocks, and once its BlockRemoved events are applied the router
  predicts right again. So the test writes the claim itself, as kvindex would (`kvmesh_apply`),
  for a prompt the worker never ran: predicted 5 blocks, found 0.
- `under`: the engine holds blocks the index lost (a purge after an event gap): the test removes
  all but the first of a cached prompt's blocks from the index: predicted 1 block, found 5. The
  one block left keeps the choice on that worker."""

from __future__ import annotations

import random
import re
import time

import grpc
import httpx
import pytest
from google.protobuf import wrappers_pb2

from kvmesh import hashing, registry
from kvmesh.block_index import BlockIndex, BlockRun
from kvmesh.v1 import inference_pb2, inference_pb2_grpc, kvindex_pb2, kvindex_pb2_grpc, router_pb2, router_pb2_grpc
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(300)

BLOCK = 128  # the engines' KV block size (engines/vllm_engine.py)
PROMPT_BLOCKS = 5
# Not a whole number of blocks: vLLM recomputes the last prompt token, so here it reuses them all.
PROMPT_LEN = PROMPT_BLOCKS * BLOCK + 17


@pytest.fixture(scope="module")
def stubs(mesh):
    with (
        grpc.insecure_channel(mesh.grpc) as g,
        grpc.insecure_channel(mesh.router) as r,
        grpc.insecure_channel(mesh.kvindex) as k,
    ):
        yield inference_pb2_grpc.InferenceStub(g), router_pb2_grpc.RouterStub(r), kvindex_pb2_grpc.KvIndexStub(k)


def prompt(seed: int) -> list[int]:
    return random.Random(f"predictions-{seed}").choices(range(1000, 20000), k=PROMPT_LEN)


def generate(inference, model: str, ids: list[int]) -> inference_pb2.GenerateResponse:
    request = inference_pb2.GenerateRequest(
        model=model,
        token_ids=inference_pb2.TokenIds(ids=ids),
        sampling=inference_pb2.SamplingParams(max_tokens=wrappers_pb2.UInt32Value(value=2)),
    )
    return list(inference.Generate(request))[-1]


def checked_since(router, model: str, started: float) -> list[router_pb2.Prediction]:
    """The router's checks of requests released since `started` (time.monotonic()), newest first."""
    route = router_pb2.RouteRequest(model=model, num_tokens=1)
    shown = router.Explain(router_pb2.ExplainRequest(request=route)).recent_predictions
    return [p for p in shown if p.age_ms <= (time.monotonic() - started) * 1000]


def run_checked(stubs, mesh, ids: list[int]) -> tuple[inference_pb2.GenerateResponse, router_pb2.Prediction]:
    """Runs the prompt on an idle mesh; returns its answer and the router's check of it."""
    inference, router, _ = stubs
    idle = router_pb2.WorkersRequest()
    wait_for(lambda: not any(w.in_flight for w in router.Workers(idle).workers), timeout_s=5, what="no load")
    started = time.monotonic()
    answer = generate(inference, mesh.model, ids)
    # The gateway releases a finished request just after its last token.
    wait_for(lambda: checked_since(router, mesh.model, started), timeout_s=5, what="the release checked")
    [checked] = checked_since(router, mesh.model, started)
    return answer, checked


def depth(index, model: str, ids: list[int], worker_id: str) -> int:
    hashes = hashing.sequence_hashes(ids, BLOCK, model)
    overlaps = index.Match(kvindex_pb2.MatchRequest(model=model, block_hashes=hashes)).overlaps
    return {o.worker_id: o.blocks for o in overlaps}.get(worker_id, 0)


async def write_index(mesh, worker_id: str, ids: list[int], stored: bool, skip_blocks: int = 0) -> None:
    """Claims (or drops) the prompt's blocks for the worker in the index, as kvindex would."""
    hashes = hashing.sequence_hashes(ids, BLOCK, mesh.model)
    client = registry.connect(mesh.redis_url, tls=mesh.tls)
    index = BlockIndex(client)
    try:
        await index.apply(worker_id, [BlockRun(stored, hashes[0], hashes[skip_blocks:])])
    finally:
        index.close()
        await client.aclose()


def mispredictions(mesh, worker_id: str, kind: str) -> float:
    port = re.search(r"metrics on :(\d+)/metrics", mesh.log("router")).group(1)
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    pattern = rf'^kvmesh_router_mispredictions_total{{(?=.*kind="{kind}")(?=.*worker="{worker_id}").*}} (\S+)$'
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_a_repeated_prompt_is_predicted_cached_and_found_cached(stubs, mesh):
    _, _, index = stubs
    ids = prompt(1)
    first, checked = run_checked(stubs, mesh, ids)
    assert (checked.worker_id, checked.predicted_cached_tokens, checked.actual_cached_tokens) == (
        first.worker_id, 0, 0
    )  # fmt: skip
    wait_for(lambda: depth(index, mesh.model, ids, first.worker_id) == PROMPT_BLOCKS, timeout_s=5, what="indexed")

    second, checked = run_checked(stubs, mesh, ids)
    assert second.worker_id == first.worker_id
    assert second.usage.cached_tokens == PROMPT_BLOCKS * BLOCK
    assert checked.predicted_cached_tokens == checked.actual_cached_tokens == PROMPT_BLOCKS * BLOCK
    assert checked.misprediction == ""


async def test_blocks_the_index_claims_but_the_engine_lacks_are_an_over_misprediction(stubs, mesh):
    _, router, _ = stubs
    worker_id = sorted(w.record.id for w in router.Workers(router_pb2.WorkersRequest()).workers)[0]
    ids = prompt(2)  # never run
    await write_index(mesh, worker_id, ids, stored=True)
    before = mispredictions(mesh, worker_id, "over")

    answer, checked = run_checked(stubs, mesh, ids)
    assert answer.worker_id == checked.worker_id == worker_id
    assert (checked.predicted_cached_tokens, checked.actual_cached_tokens) == (PROMPT_BLOCKS * BLOCK, 0)
    assert checked.misprediction == "over"
    assert mispredictions(mesh, worker_id, "over") == before + 1


async def test_blocks_the_engine_holds_but_the_index_lost_are_an_under_misprediction(stubs, mesh):
    _, _, index = stubs
    ids = prompt(3)
    first, _ = run_checked(stubs, mesh, ids)
    wait_for(lambda: depth(index, mesh.model, ids, first.worker_id) == PROMPT_BLOCKS, timeout_s=5, what="indexed")
    await write_index(mesh, first.worker_id, ids, stored=False, skip_blocks=1)
    assert depth(index, mesh.model, ids, first.worker_id) == 1
    before = mispredictions(mesh, first.worker_id, "under")

    again, checked = run_checked(stubs, mesh, ids)
    assert again.worker_id == checked.worker_id == first.worker_id
    assert (checked.predicted_cached_tokens, checked.actual_cached_tokens) == (BLOCK, PROMPT_BLOCKS * BLOCK)
    assert checked.misprediction == "under"
    assert mispredictions(mesh, first.worker_id, "under") == before + 1
