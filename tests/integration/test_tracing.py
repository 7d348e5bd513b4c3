"""One trace spans gateway → router → the engine inside Triton, continuing the caller's trace."""

import secrets
import time

import httpx


def test_a_callers_trace_continues_through_router_and_engine(mesh, traces):
    trace_id = secrets.token_hex(16)
    traceparent = f"00-{trace_id}-{secrets.token_hex(8)}-01"
    body = {"model": mesh.model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}
    r = httpx.post(f"{mesh.http}/v1/chat/completions", json=body, headers={"traceparent": traceparent}, timeout=60)
    assert r.status_code == 200
    expected = {
        ("kvmesh-gateway", "kvmesh.generate"),
        ("kvmesh-router", "kvmesh.route"),
        ("kvmesh-vllm-engine", "engine.request"),
    }
    deadline = time.monotonic() + 15
    while not expected <= {(s.service, s.name) for s in traces.trace(trace_id)}:
        assert time.monotonic() < deadline, f"spans of the trace: {traces.trace(trace_id)}"
        time.sleep(0.2)
    spans = {s.name: s for s in traces.trace(trace_id)}
    generate = spans["kvmesh.generate"]
    assert spans["kvmesh.route"].parent_span_id == generate.span_id
    assert spans["engine.request"].parent_span_id == generate.span_id
