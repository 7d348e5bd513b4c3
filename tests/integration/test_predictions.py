"""Routing checked against reality, on the real 2-worker vLLM mesh (and a small simulated one): the
router's predicted cached tokens meet the engine's reported ones at each release, and `Explain` and
the router's metrics show it.

- A repeated prompt is predicted cached and found cached: error 0, no misprediction.
- `over`: the index claims blocks the engine does not hold, which is what an eviction whose
  events kvindex has not applied yet leaves. vLLM's KV cache here holds thousands of blocks, so
  on the vLLM mesh the test writes the claim itself, as kvindex would (`kvmesh_apply`), for a
  prompt the worker never ran: predicted 5 blocks, found 0. A real eviction runs on a simulated
  worker with a 24-block cache, kvindex stopped meanwhile so that its events wait.
- `under`: the engine holds blocks the index lost (a purge after an event gap): the test removes
  all but the first of a cached prompt's blocks from the index: predicted 1 block, found 5. The
  one block left keeps the choice on that worker."""

from __future__ import annotations

import random
import re
import time

import httpx
import pytest
from google.protobuf import wrappers_pb2

from kvmesh import hashing, registry
from kvmesh.block_index import BlockIndex, BlockRun
from kvmesh.v1 import inference_pb2, router_pb2
from tests.support import meshes
from tests.support.index_probe import index_probe
from tests.support.meshes import ROUTER_DECIDES
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(300)

BLOCK = 128  # the engines' KV block size (engines/vllm_engine.py)
PROMPT_BLOCKS = 5
# Not a whole number of blocks: vLLM recomputes the last prompt token, so here it reuses them all.
PROMPT_LEN = PROMPT_BLOCKS * BLOCK + 17


@pytest.fixture(scope="module")
def probe(mesh):
    with index_probe(mesh, BLOCK) as probe:
        yield probe


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


def run_checked(probe, ids: list[int]) -> tuple[inference_pb2.GenerateResponse, router_pb2.Prediction]:
    """Runs the prompt on an idle mesh; returns its answer and the router's check of it."""
    inference, router, model = probe.inference, probe.router, probe.model
    idle = router_pb2.WorkersRequest()
    wait_for(lambda: not any(w.in_flight for w in router.Workers(idle).workers), timeout_s=5, what="no load")
    started = time.monotonic()
    answer = generate(inference, model, ids)
    # The gateway releases a finished request just after its last token.
    wait_for(lambda: checked_since(router, model, started), timeout_s=5, what="the release checked")
    [checked] = checked_since(router, model, started)
    return answer, checked


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


def test_a_repeated_prompt_is_predicted_cached_and_found_cached(probe):
    ids = prompt(1)
    first, checked = run_checked(probe, ids)
    assert (checked.worker_id, checked.predicted_cached_tokens, checked.actual_cached_tokens) == (
        first.worker_id, 0, 0
    )  # fmt: skip
    wait_for(lambda: probe.depth(ids, first.worker_id) == PROMPT_BLOCKS, timeout_s=5, what="indexed")

    second, checked = run_checked(probe, ids)
    assert second.worker_id == first.worker_id
    assert second.usage.cached_tokens == PROMPT_BLOCKS * BLOCK
    assert checked.predicted_cached_tokens == checked.actual_cached_tokens == PROMPT_BLOCKS * BLOCK
    assert checked.misprediction == ""


async def test_blocks_the_index_claims_but_the_engine_lacks_are_an_over_misprediction(probe, mesh):
    worker_id = sorted(w.record.id for w in probe.router.Workers(router_pb2.WorkersRequest()).workers)[0]
    ids = prompt(2)  # never run
    await write_index(mesh, worker_id, ids, stored=True)
    before = mispredictions(mesh, worker_id, "over")

    answer, checked = run_checked(probe, ids)
    assert answer.worker_id == checked.worker_id == worker_id
    assert (checked.predicted_cached_tokens, checked.actual_cached_tokens) == (PROMPT_BLOCKS * BLOCK, 0)
    assert checked.misprediction == "over"
    assert mispredictions(mesh, worker_id, "over") == before + 1


async def test_blocks_the_engine_holds_but_the_index_lost_are_an_under_misprediction(probe, mesh):
    ids = prompt(3)
    first, _ = run_checked(probe, ids)
    wait_for(lambda: probe.depth(ids, first.worker_id) == PROMPT_BLOCKS, timeout_s=5, what="indexed")
    await write_index(mesh, first.worker_id, ids, stored=False, skip_blocks=1)
    assert probe.depth(ids, first.worker_id) == 1
    before = mispredictions(mesh, first.worker_id, "under")

    again, checked = run_checked(probe, ids)
    assert again.worker_id == checked.worker_id == first.worker_id
    assert (checked.predicted_cached_tokens, checked.actual_cached_tokens) == (BLOCK, PROMPT_BLOCKS * BLOCK)
    assert checked.misprediction == "under"
    assert mispredictions(mesh, first.worker_id, "under") == before + 1


SIM_BLOCK = 64  # the simulated engine's KV block size (triton_models/sim)
SIM_PROMPT_LEN = 10 * SIM_BLOCK + 17  # 10 full blocks; with 2 tokens out it reserves 11
# 24 blocks: after A and B (10 cached blocks each) 4 are free, so C must evict A's blocks.
SIM_ARGS = (
    "--engine",
    "sim",
    "--engine-args",
    '{"num_blocks": 24, "max_model_len": 1024, "timing": {"speedup": 1000}}',
    *ROUTER_DECIDES,
)


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    """One simulated worker whose KV cache holds 24 blocks: a few prompts evict each other."""
    with meshes.running(tmp_path_factory.mktemp("small-cache"), SIM_ARGS, workers=1) as mesh:
        with index_probe(mesh, SIM_BLOCK) as probe:
            yield mesh, probe


def test_a_real_eviction_the_index_has_not_seen_is_an_over_misprediction(small_cache):
    """The engine evicts A's blocks to make room for C while kvindex is stopped (SIGSTOP), so the
    index still claims them: the router predicts A cached, the engine finds it gone."""
    mesh, probe = small_cache
    a, b, c = (random.Random(f"evict-{n}").choices(range(1000, 20000), k=SIM_PROMPT_LEN) for n in "abc")
    first, _ = run_checked(probe, a)
    wait_for(lambda: probe.depth(a, first.worker_id) == 10, timeout_s=5, what="A indexed")
    (kvindex,) = mesh.service_processes("kvindex")
    kvindex.suspend()
    try:
        run_checked(probe, b)
        run_checked(probe, c)  # evicts A's least recently used blocks
        again, checked = run_checked(probe, a)
    finally:
        kvindex.resume()
    assert checked.predicted_cached_tokens == 10 * SIM_BLOCK > again.usage.cached_tokens == checked.actual_cached_tokens
    assert checked.misprediction == "over" and checked.worker_id == first.worker_id
