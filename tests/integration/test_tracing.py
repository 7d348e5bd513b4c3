"""One trace per request, across gateway → router → the engines inside Triton, with the span tree
docs/observability-tracing.md documents; its id in the answer's headers (HTTP, SSE, gRPC) and in
the request's JSON log line. On a mesh of simulated prefill and decode workers (`kvmesh up --engine
sim --disagg`): a short prompt runs whole on the decode worker, a long one is disaggregated."""

from __future__ import annotations

import json
import secrets
import time

import grpc
import httpx
import pytest

from kvmesh.v1 import inference_pb2, inference_pb2_grpc
from tests.support import greedy, meshes

THRESHOLD = 128  # uncached prompt tokens from which the router disaggregates
WHOLE = {
    ("kvmesh.tokenize", "ROOT"), ("kvmesh.generate", "ROOT"), ("kvmesh.stream", "ROOT"),
    ("kvmesh.routing", "kvmesh.generate"), ("kvmesh.route", "kvmesh.routing"), ("kvmesh.infer", "kvmesh.generate"),
    ("engine.request", "kvmesh.infer"),
    ("engine.prefill", "engine.request"), ("engine.decode", "engine.request"),
}  # fmt: skip


@pytest.fixture(scope="module")
def traced(tmp_path_factory, traces):
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": traces.endpoint,
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "KVMESH_LOG_JSON": "1",
        "KVMESH_GATEWAY_LOG_REQUESTS": "true",
    }
    args = ("--engine", "sim", "--disagg", "--disagg-threshold", str(THRESHOLD))
    with meshes.running(tmp_path_factory.mktemp("traced-logs"), args, workers=2, env=env) as mesh:
        yield mesh


def edges(traces, trace_id: str, expected: set[tuple[str, str]], root: str, new_trace: bool = True):
    """(span, its parent's name) of the trace's spans below `root` (called ROOT), once `expected`
    are all in (the processes export every 200 ms); every span's parent is in the trace, and the
    trace begins at `root` unless a caller's trace continued (`new_trace` False)."""
    deadline = time.monotonic() + 20
    while True:
        spans = traces.trace(trace_id)
        label = {s.span_id: "ROOT" if s.name == root else s.name for s in spans}
        found = {(s.name, label.get(s.parent_span_id, "?")) for s in spans if s.name != root}
        if expected <= found or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert expected <= found and "?" not in {parent for _, parent in found}, f"the trace's spans: {spans}"
    roots = [s for s in spans if s.name == root]
    assert len(roots) == 1 and (roots[0].parent_span_id == "") is new_trace, roots
    return found


def log_lines(mesh, name: str) -> list[dict]:
    return [json.loads(line) for line in mesh.log(name).splitlines() if line.startswith("{")]


def finished_line(mesh, request_id_part: str) -> dict:
    deadline = time.monotonic() + 10
    while True:
        lines = [x for x in log_lines(mesh, "gateway") if x["logger"] == "kvmesh.gateway.requests"]
        mine = [x for x in lines if request_id_part in x["request_id"]]
        if mine or time.monotonic() > deadline:
            assert len(mine) == 1, lines
            return mine[0]
        time.sleep(0.2)


def test_an_openai_request_is_one_trace_named_in_its_headers_and_log_line(traced, traces):
    body = {"model": traced.model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}
    r = httpx.post(f"{traced.http}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200
    trace_id = r.headers["x-trace-id"]
    found = edges(traces, trace_id, WHOLE, "POST /v1/chat/completions")
    assert ("engine.kv_transfer", "engine.request") not in found
    (route,) = [s for s in traces.trace(trace_id) if s.name == "kvmesh.route"]
    candidates = json.loads(route.attributes["kvmesh.candidates"])
    assert {"overlap", "in_flight", "score"} <= candidates[route.attributes["kvmesh.worker"]].keys(), route.attributes
    assert route.attributes["kvmesh.policy"] and "kvmesh.predicted_cached_tokens" in route.attributes
    line = finished_line(traced, r.json()["id"])
    assert line["trace_id"] == trace_id and line["status"] == "200" and line["service"] == "kvmesh-gateway"
    assert line["completion_tokens"] == 4 and line["worker"] and line["ttft_ms"] <= line["e2e_ms"]


def test_a_streamed_answer_and_an_error_carry_the_trace_id_and_a_callers_trace_continues(traced, traces):
    trace_id = secrets.token_hex(16)
    body = {"model": traced.model, "prompt": "Hello", "max_tokens": 3, "stream": True}
    caller = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
    with httpx.stream("POST", f"{traced.http}/v1/completions", json=body, headers=caller, timeout=60) as r:
        assert r.status_code == 200 and r.headers["x-trace-id"] == trace_id
        assert list(r.iter_lines())[-2] == "data: [DONE]"
    edges(traces, trace_id, WHOLE, "POST /v1/completions", new_trace=False)
    refused = httpx.post(f"{traced.http}/v1/completions", json={**body, "model": "nope"}, timeout=60)
    assert refused.status_code == 404 and len(refused.headers["x-trace-id"]) == 32


def test_a_disaggregated_request_is_one_trace_through_prefill_kv_transfer_and_decode(traced, traces):
    ids = [100 + (i * 7919) % 40000 for i in range(3 * THRESHOLD)]  # long and never seen: disaggregated
    with grpc.insecure_channel(traced.grpc) as channel:
        request = greedy.request(traced.model, ids, 8)
        request.request_id = "disagg-trace"
        call = inference_pb2_grpc.InferenceStub(channel).Generate(request, timeout=60)
        responses: list[inference_pb2.GenerateResponse] = list(call)
        trace_id = dict(call.initial_metadata())["x-trace-id"]
    assert sum(len(r.token_ids) for r in responses) == 8
    edges(traces, trace_id, WHOLE | {("engine.kv_transfer", "engine.request")}, "/kvmesh.v1.Inference/Generate")
    spans = traces.trace(trace_id)
    assert sum(s.name == "kvmesh.infer" for s in spans) == 2  # the prefill worker's call, then the decode worker's
    assert sum(s.name == "engine.request" for s in spans) == 2
    line = finished_line(traced, "disagg-trace.")
    assert line["trace_id"] == trace_id and line["client_request_id"] == "disagg-trace" and line["status"] == "OK"
