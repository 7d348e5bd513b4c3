"""Router plugins and profiles, table-driven."""

from collections import Counter

import pytest

from kvmesh.routing.config import DEFAULT_POLICIES
from kvmesh.routing.framework.plugins import SchedulingProfileSpec, build
from kvmesh.routing.framework.types import Candidate, Request, WorkerLoad
from kvmesh.v1 import worker_pb2


def cand(
    worker_id, in_flight=0, capacity=4, model="m", role=worker_pb2.ROLE_AGGREGATED, draining=False, unresponsive=False
):
    rec = worker_pb2.WorkerRecord(
        id=worker_id, model=model, role=role, capacity=capacity, kv_block_size=16, draining=draining,
        unresponsive=unresponsive,
    )  # fmt: skip
    return Candidate(rec, WorkerLoad(in_flight=in_flight))


REQ = Request(model="m", request_id="r", num_tokens=40)


@pytest.mark.parametrize(
    "candidates, expected, emptied_by",
    [
        ([cand("a", 3), cand("b", 1), cand("c", 2)], "b", ""),
        ([cand("a", 1, capacity=2), cand("b", 2, capacity=8)], "b", ""),  # relative to capacity
        ([cand("a", model="other"), cand("b", 5)], "b", ""),
        ([cand("a", role=worker_pb2.ROLE_PREFILL), cand("b", 3)], "b", ""),
        ([cand("a", draining=True), cand("b", 3)], "b", ""),  # changing role: takes nothing new
        ([cand("a", draining=True)], None, "draining"),
        ([cand("a", unresponsive=True), cand("b", 3)], "b", ""),  # its engine does not answer: nothing new
        ([cand("a", unresponsive=True)], None, "unresponsive"),
        ([cand("a", model="other")], None, "model"),
        ([cand("a", 32, capacity=4)], None, "capacity"),  # 4 × queue factor 8
        ([], None, ""),
    ],
)
def test_least_loaded(candidates, expected, emptied_by):
    decision = build("least-loaded", DEFAULT_POLICIES["least-loaded"]).run(REQ, candidates)
    assert (decision.chosen.id if decision.chosen else None) == expected
    assert decision.emptied_by == emptied_by


def test_explain_verdicts_name_the_filter_and_scores():
    decision = build("least-loaded", DEFAULT_POLICIES["least-loaded"]).run(
        REQ, [cand("a", model="x"), cand("b", 1)], dry_run=True
    )
    verdicts = {v.candidate.id: v for v in decision.verdicts}
    assert verdicts["a"].filtered_by == "model"
    assert verdicts["b"].scores == {"least_loaded": 0.75}
    assert verdicts["b"].total == pytest.approx(0.75)


def test_round_robin_cycles_and_dry_run_does_not_advance():
    profile = build("round-robin", DEFAULT_POLICIES["round-robin"])
    cands = [cand("b"), cand("a"), cand("c")]
    assert profile.run(REQ, cands, dry_run=True).chosen.id == "a"
    assert [profile.run(REQ, cands).chosen.id for _ in range(4)] == ["a", "b", "c", "a"]


def test_ties_are_broken_at_random():
    profile = build("least-loaded", DEFAULT_POLICIES["least-loaded"])
    picks = Counter(profile.run(REQ, [cand("a"), cand("b")]).chosen.id for _ in range(200))
    assert picks["a"] > 40 and picks["b"] > 40


def test_power_of_two_never_picks_the_worst_of_three():
    profile = build("power-of-two", DEFAULT_POLICIES["power-of-two"])
    cands = [cand("idle", 0), cand("mid", 2), cand("busy", 3)]
    assert "busy" not in {profile.run(REQ, cands).chosen.id for _ in range(100)}


def test_random_reaches_everyone():
    profile = build("random", DEFAULT_POLICIES["random"])
    assert {profile.run(REQ, [cand("a"), cand("b"), cand("c")]).chosen.id for _ in range(100)} == {"a", "b", "c"}


def test_unknown_plugin_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown scorer 'nope'"):
        build("bad", SchedulingProfileSpec(scorers={"nope": 1.0}))


def kv_cand(worker_id, overlap=0, prefill=0, decode=0):
    rec = worker_pb2.WorkerRecord(
        id=worker_id, model="m", role=worker_pb2.ROLE_AGGREGATED, capacity=4, kv_block_size=16
    )
    return Candidate(rec, WorkerLoad(prefill_blocks=prefill, decode_blocks=decode), overlap_blocks=overlap)


KV_REQ = Request(model="m", request_id="r", num_tokens=160, block_hashes=tuple(range(10)), block_size=16)


@pytest.mark.parametrize(
    "candidates, expected, costs",
    [
        # cost = max(prefill + 10 − overlap, 0) + decode (Dynamo's, prefill weight 1)
        ([kv_cand("a", overlap=8), kv_cand("b")], "a", {"a": 2, "b": 10}),
        ([kv_cand("a", overlap=8, prefill=20), kv_cand("b")], "b", {"a": 22, "b": 10}),  # a is busy prefilling
        ([kv_cand("a", overlap=10, decode=30), kv_cand("b", decode=5)], "b", {"a": 30, "b": 15}),
        ([kv_cand("a", overlap=10, decode=9), kv_cand("b", decode=5)], "a", {"a": 9, "b": 15}),
    ],
)
def test_dynamo_cost(candidates, expected, costs):
    decision = build("dynamo", DEFAULT_POLICIES["dynamo"]).run(KV_REQ, candidates)
    assert decision.chosen.id == expected
    assert {v.candidate.id: -v.total for v in decision.verdicts} == costs


def test_prefill_weight_is_config():
    spec = SchedulingProfileSpec(scorers={"prefill_load": 3.0, "decode_load": 1.0}, picker="max_score")
    candidates = [kv_cand("a", overlap=10, decode=25), kv_cand("b", decode=0)]
    # weight 1: a costs 25, b 10 → b; weight 3: a costs 25, b 30 → a
    assert build("p", spec).run(KV_REQ, candidates).chosen.id == "a"


def test_kv_overlap_weight_buys_affinity_against_load():
    candidates = [kv_cand("a", overlap=8, prefill=12), kv_cand("b")]
    # Dynamo's cost: a 14, b 10 → b; kv-aware counts the overlap once more: a 14 − 8, b 10 → a
    assert build("d", DEFAULT_POLICIES["dynamo"]).run(KV_REQ, candidates).chosen.id == "b"
    assert build("k", DEFAULT_POLICIES["kv-aware"]).run(KV_REQ, candidates).chosen.id == "a"


def test_softmax_temperature_spreads_near_equal_workers():
    spec = SchedulingProfileSpec(
        scorers={"prefill_load": 1.0}, picker="softmax", params={"softmax": {"temperature": 1.0}}
    )
    profile = build("soft", spec)
    candidates = [kv_cand("a", overlap=1), kv_cand("b")]  # costs 9 and 10
    picks = Counter(profile.run(KV_REQ, candidates).chosen.id for _ in range(2000))
    # p(a) = e / (e + 1) ≈ 0.73
    assert 0.68 < picks["a"] / 2000 < 0.78
    greedy = build("g", SchedulingProfileSpec(scorers={"prefill_load": 1.0}, picker="softmax"))
    assert {greedy.run(KV_REQ, candidates).chosen.id for _ in range(50)} == {"a"}


def test_negative_temperature_is_refused():
    with pytest.raises(ValueError, match="temperature"):
        build("bad", SchedulingProfileSpec(picker="softmax", params={"softmax": {"temperature": -1}}))


@pytest.mark.parametrize(
    "capacity, queue_factor, in_flight, kept",
    [
        (4, 8.0, 31, True),
        (4, 8.0, 32, False),
        (3, 1.5, 3, True),  # limit int(4.5) = 4
        (3, 1.5, 4, False),
        (0, 8.0, 0, True),  # an idle worker always takes one
        (0, 8.0, 1, False),
        (4, 0.0, 0, True),
        (4, 0.0, 1, False),
    ],
)
def test_capacity_limit_is_at_least_one(capacity, queue_factor, in_flight, kept):
    spec = SchedulingProfileSpec(filters=["capacity"], params={"capacity": {"queue_factor": queue_factor}})
    decision = build("c", spec).run(REQ, [cand("a", in_flight, capacity=capacity)])
    assert (decision.chosen is not None) == kept
    assert decision.emptied_by == ("" if kept else "capacity")


def test_filters_drop_only_the_workers_they_exclude():
    candidates = [cand("a"), cand("b", model="x"), cand("c", draining=True), cand("d"), cand("e", unresponsive=True)]
    request = Request(model="m", request_id="r", num_tokens=40, excluded=frozenset({"d"}))
    decision = build("least-loaded", DEFAULT_POLICIES["least-loaded"]).run(request, candidates)
    assert decision.chosen.id == "a"
    assert {v.candidate.id: v.filtered_by for v in decision.verdicts} == {
        "a": "", "b": "model", "c": "draining", "d": "excluded", "e": "unresponsive"
    }  # fmt: skip
    assert [v.candidate.id for v in decision.verdicts] == ["a", "b", "c", "d", "e"]  # in candidate order
