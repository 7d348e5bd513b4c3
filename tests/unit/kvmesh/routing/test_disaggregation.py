"""The router's disaggregation decision, table-driven: split only when the uncached prompt reaches
the threshold, the chosen worker decodes, and a prefill worker can take it; excluded workers
are never chosen."""

from dataclasses import replace

import pytest

from kvmesh.routing import disaggregation
from kvmesh.routing.config import DEFAULT_POLICIES
from kvmesh.routing.framework.plugins import build
from kvmesh.routing.framework.types import Candidate, Request, WorkerLoad
from kvmesh.v1 import worker_pb2

P, D, A = worker_pb2.ROLE_PREFILL, worker_pb2.ROLE_DECODE, worker_pb2.ROLE_AGGREGATED
BLOCK = 16


def cand(worker_id, role, overlap=0, in_flight=0, prefill_blocks=0):
    record = worker_pb2.WorkerRecord(id=worker_id, model="m", role=role, capacity=4, kv_block_size=BLOCK)
    return Candidate(record, WorkerLoad(in_flight=in_flight, prefill_blocks=prefill_blocks), overlap)


def decide(candidates, num_tokens=1000, threshold=500, aggregated_only=False, excluded=()):
    profile = build("kv-aware", DEFAULT_POLICIES["kv-aware"])
    request = Request(model="m", request_id="r", num_tokens=num_tokens, block_size=BLOCK, excluded=frozenset(excluded))
    decision = profile.run(request, candidates, dry_run=True)
    if decision.chosen is None:
        return None, None
    return decision.chosen.id, disaggregation.split(
        profile, request, decision.chosen, candidates, threshold, aggregated_only, dry_run=True
    )


@pytest.mark.parametrize(
    "candidates, kwargs, decode, prefill, reason",
    [
        ([cand("p", P), cand("d", D)], {}, "d", "p", "1000 uncached prompt tokens ≥ threshold 500: prefill on p"),
        # The decode worker holds most of the prompt: 1000 − 40·16 = 360 uncached < 500.
        ([cand("p", P), cand("d", D, overlap=40)], {}, "d", None, "360 uncached prompt tokens < threshold 500"),
        ([cand("p", P), cand("d", D)], {"num_tokens": 100}, "d", None, "100 uncached prompt tokens < threshold 500"),
        ([cand("d", D)], {}, "d", None, "no prefill worker: prefill locally"),
        ([cand("p", P, in_flight=32), cand("d", D)], {}, "d", None, "every prefill worker is at capacity"),
        ([cand("p", P), cand("d", D)], {"threshold": 0}, "d", None, "disaggregation is off"),
        ([cand("p", P), cand("d", D)], {"aggregated_only": True}, "d", None, "aggregated_only"),
        ([cand("p", P), cand("a", A)], {}, "a", None, "the chosen worker is aggregated"),
        # The prefill worker is picked by overlap: p2 holds 30 blocks of the prompt.
        ([cand("p1", P), cand("p2", P, overlap=30), cand("d", D)], {}, "d", "p2", "prefill on p2"),
        # Never on a worker that failed this request.
        ([cand("p", P), cand("d1", D), cand("d2", D, in_flight=2)], {"excluded": ["d1"]}, "d2", "p", "prefill on p"),
    ],
)
def test_split(candidates, kwargs, decode, prefill, reason):
    chosen, split = decide(candidates, **kwargs)
    assert chosen == decode
    assert (split.prefill_worker.id if split.prefill_worker else None) == prefill
    assert split.disaggregated == (prefill is not None)
    assert reason in split.reason


def test_prefill_workers_never_take_a_whole_request():
    assert decide([cand("p", P)]) == (None, None)


def test_excluding_every_worker_leaves_none():
    chosen, _ = decide([cand("d", D)], excluded=["d"])
    assert chosen is None


def test_uncached_tokens_count_whole_blocks_held():
    request = Request(model="m", request_id="r", num_tokens=100, block_size=BLOCK)
    assert disaggregation.uncached_tokens(request, cand("d", D, overlap=2)) == 68
    assert disaggregation.uncached_tokens(replace(request, num_tokens=10), cand("d", D, overlap=2)) == 0
