"""Disaggregated serving on real engines: long uncached prompts are prefilled on the prefill worker
and their KV moved by NIXL, the decode worker refuses what it cannot serve, a dead prefill worker
means local prefill, and the greedy output equals the aggregated mesh's, token for token.

The prefill worker dies and the aggregated mesh replaces this one in the last two tests: they stay
last in this file."""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from kvmesh import hashing
from kvmesh.net import free_port
from kvmesh.v1 import inference_pb2, inference_pb2_grpc, router_pb2, worker_pb2
from tests.integration.disagg.conftest import THRESHOLD
from tests.support import greedy, prompts
from tests.support.crash import crash
from tests.support.waiting import wait_for

BLOCK = 128
# Greedy prompts for the equality check: short, a few blocks, one over 1,000 tokens, and one
# whose prefill worker is dead (local prefill on the decode worker).
PROMPT_LENGTHS = {"short-150": 150, "medium-450": 450, "long-1100": 1100, "fallback-300": 300}
DISAGGREGATED = ["short-150", "medium-450", "long-1100"]
MAX_TOKENS = 24


def prompt(name: str) -> list[int]:
    return prompts.english(name, PROMPT_LENGTHS[name])


def workers(router) -> dict[int, worker_pb2.WorkerRecord]:
    return {w.record.role: w.record for w in router.Workers(router_pb2.WorkersRequest()).workers}


def generate(inference, model, ids, max_tokens=MAX_TOKENS) -> list[inference_pb2.GenerateResponse]:
    return list(inference.Generate(greedy.request(model, ids, max_tokens), timeout=120))


def tokens(responses: list[inference_pb2.GenerateResponse]) -> list[int]:
    return [t for r in responses for t in r.token_ids]


def metric(mesh, name: str) -> float:
    for line in httpx.get(f"{mesh.http}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def fallbacks(mesh) -> float:
    name = "kvmesh_gateway_prefill_fallbacks_total"
    return sum(metric(mesh, f'{name}{{reason="{reason}"}}') for reason in ("error", "timeout"))


def explain(router, model, ids):
    hashes = hashing.sequence_hashes(ids, BLOCK, model)
    route = router_pb2.RouteRequest(model=model, num_tokens=len(ids), block_hashes=hashes, block_size=BLOCK)
    return router.Explain(router_pb2.ExplainRequest(request=route))


@dataclass
class Run:
    """One request: the router's decision before it, the prefill worker then, by how much the request
    moved the gateway's counter (disaggregated requests; prefill fallbacks), and the answer."""

    decision: router_pb2.Disaggregation
    prefill_worker_id: str
    counted: float
    responses: list[inference_pb2.GenerateResponse]


@pytest.fixture(scope="module")
def first_run(stubs, disagg):
    """name → the Run of that prompt's first request, made on first use: only the first is
    disaggregated (a repeat finds the prompt cached on the decode worker)."""
    inference, router = stubs
    runs: dict[str, Run] = {}

    def run(name: str) -> Run:
        if name not in runs:
            ids = prompt(name)
            prefill_worker_id = workers(router)[worker_pb2.ROLE_PREFILL].id
            decision = explain(router, disagg.model, ids).disaggregation
            before = metric(disagg, "kvmesh_gateway_disaggregated_total")
            responses = generate(inference, disagg.model, ids)
            counted = metric(disagg, "kvmesh_gateway_disaggregated_total") - before
            runs[name] = Run(decision, prefill_worker_id, counted, responses)
        return runs[name]

    return run


def test_workers_register_with_their_roles(stubs):
    _, router = stubs
    roles = workers(router)
    assert set(roles) == {worker_pb2.ROLE_PREFILL, worker_pb2.ROLE_DECODE}
    assert {r.triton_model for r in roles.values()} == {"vllm_prefill", "vllm_decode"}


def test_prefill_and_decode_kv_caches_are_on_huge_pages(disagg):
    """NIXL reads the KV of another process page by page (UCX's CMA); on 2 MiB pages it moves
    twice the bytes a second here (bench.kv_transfer)."""
    for worker in disagg.service_processes("worker"):
        engines = [p for p in worker.children(recursive=True) if p.name() == "VLLM::Worker"]
        assert engines, f"no vLLM worker process under {worker.cmdline()}"
        rollups = [Path(f"/proc/{p.pid}/smaps_rollup").read_text().splitlines() for p in engines]
        huge_kib = [int(line.split()[1]) for lines in rollups for line in lines if line.startswith("AnonHugePages:")]
        # SmolLM2's KV cache alone is 512 MiB (kvmesh's engine arguments).
        assert max(huge_kib) >= 256 * 1024, (worker.cmdline(), huge_kib)


@pytest.mark.parametrize("name", DISAGGREGATED)
def test_long_uncached_prompts_are_prefilled_on_the_prefill_worker(first_run, disagg, name):
    run = first_run(name)
    assert run.decision.disaggregated and run.decision.uncached_tokens == len(prompt(name)), run.decision
    assert run.decision.prefill_worker_id == run.prefill_worker_id
    assert run.counted == 1
    assert metric(disagg, "kvmesh_gateway_disagg_first_token_mismatch_total") == 0
    last = run.responses[-1]
    assert last.finish_reason == inference_pb2.FINISH_REASON_LENGTH
    assert len(tokens(run.responses)) == MAX_TOKENS == last.usage.completion_tokens


def test_a_cached_prompt_stays_on_the_decode_worker(stubs, disagg, first_run):
    """After its first run the decode worker holds the long prompt (the KV it read): nothing left to prefill."""
    _, router = stubs
    first_run("long-1100")
    explained = explain(router, disagg.model, prompt("long-1100")).disaggregation
    assert not explained.disaggregated and "< threshold" in explained.reason, explained


def test_a_short_prompt_is_prefilled_locally(stubs, disagg):
    inference, router = stubs
    ids = random.Random(5).choices(range(1000, 20000), k=THRESHOLD // 2)
    assert not explain(router, disagg.model, ids).disaggregation.disaggregated
    before = metric(disagg, "kvmesh_gateway_disaggregated_total")
    assert len(tokens(generate(inference, disagg.model, ids, 4))) == 4
    assert metric(disagg, "kvmesh_gateway_disaggregated_total") == before


def decode_directly(record, ids, transfer: str | None, timeout_s: float = 30):
    """A request straight to the decode worker's Triton, as a client that skips the gateway."""
    client = triton.InferenceServerClient(record.triton_grpc_address)
    inputs = [triton.InferInput("input_ids", [len(ids)], "INT32")]
    inputs[0].set_data_from_numpy(np.asarray(ids, dtype=np.int32))
    if transfer is not None:
        inputs.append(triton.InferInput("kv_transfer_params", [1], "BYTES"))
        inputs[1].set_data_from_numpy(np.asarray([transfer.encode()], dtype=np.object_))
    results = []
    client.start_stream(callback=lambda result, error: results.append((result, error)))
    client.async_stream_infer(record.triton_model, inputs, request_id="direct")
    wait_for(lambda: results, timeout_s=timeout_s, what="a response")
    client.stop_stream()
    client.close()
    return results[0]


@pytest.mark.parametrize(
    "transfer, words",
    [
        (None, "kv_transfer_params: required on a decode instance"),
        ("[]", "kv_transfer_params: must be a JSON object"),
        (json.dumps({"do_remote_prefill": True}), "not from a vLLM prefill instance (missing remote_engine_id"),
    ],
)
def test_the_decode_instance_refuses_missing_or_wrong_transfer_params(stubs, transfer, words):
    _, router = stubs
    _, error = decode_directly(workers(router)[worker_pb2.ROLE_DECODE], [1000, 1001, 1002], transfer)
    assert isinstance(error, InferenceServerException) and words in error.message(), error


def test_transfer_params_naming_a_prefill_instance_that_is_not_there_fail_in_time(stubs):
    """Well-formed, but the KV cannot be fetched: vLLM would retry the handshake forever."""
    _, router = stubs
    bogus = {"do_remote_prefill": True, "do_remote_decode": False, "remote_engine_id": "gone",
             "remote_request_id": "r", "remote_host": "127.0.0.1", "remote_port": free_port(),
             "remote_block_ids": [0, 1], "remote_num_tokens": 300, "tp_size": 1}  # fmt: skip
    started = time.monotonic()
    ids = random.Random(13).choices(range(1000, 20000), k=300)
    _, error = decode_directly(workers(router)[worker_pb2.ROLE_DECODE], ids, json.dumps(bogus), 60)
    assert isinstance(error, InferenceServerException), error
    assert "did not arrive in 8s" in error.message() and time.monotonic() - started < 30, error.message()


@pytest.fixture(scope="module")
def without_prefill_worker(stubs, disagg, first_run) -> Run | None:
    """SIGKILLs the prefill worker, then runs the fallback prompt; None when the prefill worker's
    lease ran out before the request (the router then no longer names it). The disaggregated
    prompts run first: they need the prefill worker."""
    inference, router = stubs
    for name in DISAGGREGATED:
        first_run(name)
    prefill = workers(router)[worker_pb2.ROLE_PREFILL]
    clean_up = crash(next(p for p in disagg.service_processes("worker") if "vllm_prefill" in " ".join(p.cmdline())))
    try:
        ids = prompt("fallback-300")
        before = fallbacks(disagg)
        decision = explain(router, disagg.model, ids).disaggregation
        if decision.prefill_worker_id != prefill.id:
            return None
        responses = generate(inference, disagg.model, ids)
        return Run(decision, prefill.id, fallbacks(disagg) - before, responses)
    finally:
        clean_up()


def test_a_dead_prefill_worker_means_local_prefill_not_a_failed_request(without_prefill_worker):
    """Until its lease runs out the router still names the killed prefill worker; the gateway's
    prefill fails and the decode worker prefills locally (same greedy output: the next test)."""
    if without_prefill_worker is None:
        pytest.skip("the prefill worker's lease ran out before the request")
    assert len(tokens(without_prefill_worker.responses)) == MAX_TOKENS
    assert without_prefill_worker.counted == 1


def test_disaggregated_output_equals_aggregated(first_run, without_prefill_worker, request):
    disaggregated = {name: tokens(first_run(name).responses) for name in DISAGGREGATED}
    if without_prefill_worker is not None:
        disaggregated["fallback-300"] = tokens(without_prefill_worker.responses)
    # Only now: the aggregated mesh replaces this module's.
    mesh = request.getfixturevalue("mesh")
    with grpc.insecure_channel(mesh.grpc) as channel:
        inference = inference_pb2_grpc.InferenceStub(channel)
        aggregated = {name: tokens(generate(inference, mesh.model, prompt(name))) for name in disaggregated}
    assert all(len(t) == MAX_TOKENS for t in aggregated.values())
    assert disaggregated == aggregated
