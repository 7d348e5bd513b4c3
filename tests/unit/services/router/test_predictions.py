"""Routing checked against the engine: each Route keeps the cached tokens it predicts on the worker
that computes the prompt; a Release with the engine's figure exports the error and a
misprediction (a block or more, over or under) and shows it in Explain; a Release without one
(failed, moved, cancelled) forgets the prediction. The Route's span carries the decision."""

from __future__ import annotations

import json

import pytest
from google.protobuf import wrappers_pb2
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from kvmesh.routing import predictions
from kvmesh.routing.config import DEFAULT_POLICIES
from kvmesh.routing.framework.plugins import build
from kvmesh.routing.framework.types import Candidate
from kvmesh.routing.predictions import Predictions, predicted_cached_tokens
from kvmesh.routing.router import Router
from kvmesh.v1 import router_pb2, worker_pb2
from services.router.servicer import RouterServicer

BLOCK = 16
A, P, D = worker_pb2.ROLE_AGGREGATED, worker_pb2.ROLE_PREFILL, worker_pb2.ROLE_DECODE


@pytest.mark.parametrize(
    "overlap, num_tokens, predicted",
    [
        (0, 100, 0),
        (3, 100, 48),
        # A prompt held whole still computes its last token, so its last full block too.
        (4, 64, 48),
        (4, 65, 64),
        (1, 0, 0),
    ],
)
def test_predicted_cached_tokens(overlap, num_tokens, predicted):
    assert predicted_cached_tokens(overlap, num_tokens, BLOCK) == predicted


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize(
    "predicted, actual, kind",
    [
        (48, 48, ""),
        (48, 40, ""),  # less than a block apart
        (48, 32, "over"),  # the engine lost a block the index still claims
        (0, 64, "under"),  # the engine holds blocks the index does not know
    ],
)
def test_a_release_with_actuals_checks_the_prediction(predicted, actual, kind):
    worker = f"w-{predicted}-{actual}"
    p = Predictions()
    p.expect("r", worker, predicted, BLOCK)
    outcome = p.settle("r", actual)
    assert (outcome.predicted, outcome.actual, outcome.misprediction) == (predicted, actual, kind)
    assert sample("kvmesh_router_prediction_error_tokens_count", worker=worker) == 1
    # Buckets below 0 leave out `_sum` (OpenMetrics): the error shows in the buckets.
    exact = sample("kvmesh_router_prediction_error_tokens_bucket", worker=worker, le="0.0") - sample(
        "kvmesh_router_prediction_error_tokens_bucket", worker=worker, le="-1.0"
    )
    assert exact == (predicted == actual)
    for k in ("over", "under"):
        assert sample("kvmesh_router_mispredictions_total", worker=worker, kind=k) == (k == kind)
    assert list(p.recent) == [outcome]


def test_exact_hits_have_a_bucket_of_their_own():
    assert -1 in predictions.ERROR_BUCKETS and 0 in predictions.ERROR_BUCKETS
    positive = [b for b in predictions.ERROR_BUCKETS if b > 0]
    assert [-b for b in reversed(positive)] == [b for b in predictions.ERROR_BUCKETS if b < -1]


def test_a_release_without_actuals_forgets_the_prediction():
    p = Predictions()
    p.expect("r", "w-forget", 48, BLOCK)
    assert p.settle("r", None) is None
    assert p.settle("r", 48) is None  # nothing left to check
    assert p.settle("never-routed-here", 48) is None
    assert not p.recent and sample("kvmesh_router_prediction_error_tokens_count", worker="w-forget") == 0


def test_the_ring_and_the_pending_predictions_are_bounded(monkeypatch):
    monkeypatch.setattr(predictions, "MAX_PENDING", 3)
    p = Predictions(keep=2)
    for n in range(5):
        p.expect(f"r{n}", "w-bounded", 0, BLOCK)
    assert p.settle("r0", 0) is None and p.settle("r1", 0) is None  # the oldest were dropped
    for n in (2, 3, 4):
        p.settle(f"r{n}", 0)
    assert [o.request_id for o in p.recent] == ["r3", "r4"]


class FakeCandidates:
    def __init__(self, candidates: list[Candidate]):
        self.candidates = candidates
        self.workers = None

    async def gather(self, request):
        return self.candidates


class NoAccounting:
    def add(self, *args):
        pass

    def mark_prefilled(self, request_id):
        pass

    def release(self, request_id):
        pass


def candidate(worker_id: str, role: int, overlap: int) -> Candidate:
    record = worker_pb2.WorkerRecord(id=worker_id, model="m", role=role, capacity=4, kv_block_size=BLOCK)
    return Candidate(record, overlap_blocks=overlap)


def servicer(*candidates: Candidate, threshold: int = 0) -> RouterServicer:
    profiles = {"kv-aware": build("kv-aware", DEFAULT_POLICIES["kv-aware"])}
    return RouterServicer(Router(FakeCandidates(list(candidates)), NoAccounting(), profiles, "kv-aware", threshold))


def route(request_id: str, num_tokens: int = 100) -> router_pb2.RouteRequest:
    return router_pb2.RouteRequest(model="m", request_id=request_id, num_tokens=num_tokens, block_size=BLOCK)


def release(request_id: str, cached_tokens: int) -> router_pb2.ReleaseRequest:
    return router_pb2.ReleaseRequest(request_id=request_id, cached_tokens=wrappers_pb2.UInt32Value(value=cached_tokens))


async def explain(s: RouterServicer) -> list[router_pb2.Prediction]:
    return list((await s.Explain(router_pb2.ExplainRequest(request=route("")), None)).recent_predictions)


async def test_explain_shows_the_last_predictions_newest_first():
    s = servicer(candidate("a1", A, overlap=3))
    await s.Route(route("hit"), None)
    await s.Route(route("evicted"), None)
    await s.Route(route("failed"), None)
    await s.Release(release("hit", 48), None)
    await s.Release(release("evicted", 0), None)
    await s.Release(router_pb2.ReleaseRequest(request_id="failed"), None)  # no actuals: not checked
    shown = await explain(s)
    assert [(p.request_id, p.worker_id, p.predicted_cached_tokens, p.actual_cached_tokens, p.misprediction)
            for p in shown] == [("evicted", "a1", 48, 0, "over"), ("hit", "a1", 48, 48, "")]  # fmt: skip
    assert all(0 <= p.age_ms < 1000 for p in shown)


async def test_a_disaggregated_request_is_checked_on_its_prefill_worker():
    s = servicer(candidate("p1", P, overlap=2), candidate("d1", D, overlap=0), threshold=32)
    decision = await s.Route(route("split"), None)
    assert decision.prefill_worker.id == "p1"
    await s.Release(release("split", 32), None)
    [shown] = await explain(s)
    assert (shown.worker_id, shown.predicted_cached_tokens, shown.misprediction) == ("p1", 32, "")


async def test_the_session_carries_releases_old_and_new():
    s = servicer(candidate("a2", A, overlap=1))

    async def messages():
        yield router_pb2.SessionRequest(route=route("new"))
        yield router_pb2.SessionRequest(route=route("old"))
        # An older gateway's release (an id only) and a newer one's, with the engine's figure.
        yield router_pb2.SessionRequest(released="old", more=[router_pb2.SessionRequest(release=release("new", 16))])

    answers = [a async for a in s.Session(messages(), None)]
    assert answers[-1].summary == router_pb2.SessionSummary(routed=2, released=2)
    assert [(p.request_id, p.actual_cached_tokens) for p in await explain(s)] == [("new", 16)]


async def test_the_route_span_names_the_decision_and_every_candidate():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    s = servicer(candidate("a3", A, overlap=3), candidate("a4", A, overlap=0))
    with provider.get_tracer("test").start_as_current_span("route"):
        await s.Route(route("traced"), None)
    [span] = exporter.get_finished_spans()
    attributes = dict(span.attributes)
    assert attributes["kvmesh.policy"] == "kv-aware" and attributes["kvmesh.worker"] == "a3"
    assert attributes["kvmesh.overlap_blocks"] == 3 and attributes["kvmesh.predicted_cached_tokens"] == 48
    candidates = json.loads(attributes["kvmesh.candidates"])
    assert candidates["a3"]["overlap"] == 3 and candidates["a4"] == {
        "overlap": 0, "in_flight": 0, "prefill": 0, "decode": 0, "score": candidates["a4"]["score"]
    }  # fmt: skip
