"""The line a finished request logs, and its front's stream span."""

import logging

from opentelemetry import trace

from services.gateway.generation import Chunk, Usage
from services.gateway.request_log import RequestLine
from tests.support import spans


def test_one_line_with_the_requests_figures_and_trace_id_and_one_stream_span(monkeypatch, caplog):
    exporter = spans.recording(monkeypatch)
    root = trace.get_tracer("t").start_span("POST /v1/chat/completions")
    line = RequestLine("grpc", "mine.abc", "m", root, client_request_id="mine", key="team")
    line.saw(Chunk("a", [1], worker_id="w1"))
    line.saw(Chunk("b", [2], "stop", Usage(5, 2, 3), "w1"))
    with caplog.at_level(logging.INFO, "kvmesh.gateway.requests"):
        line.end("OK")
        line.end("CANCELLED")  # only the first outcome counts
    root.end()
    (record,) = caplog.records
    fields = {k: getattr(record, k) for k in ("request_id", "client_request_id", "key", "model", "status", "worker")}
    assert fields == {"request_id": "mine.abc", "client_request_id": "mine", "key": "team", "model": "m",
                      "status": "OK", "worker": "w1"}  # fmt: skip
    assert (record.prompt_tokens, record.completion_tokens, record.cached_tokens) == (5, 2, 3)
    assert record.ttft_ms <= record.e2e_ms
    assert record.trace_id == f"{root.get_span_context().trace_id:032x}"
    assert spans.tree(exporter) == {("POST /v1/chat/completions", None), ("kvmesh.stream", "POST /v1/chat/completions")}


def test_a_request_refused_before_its_first_chunk_has_no_stream_span(monkeypatch, caplog):
    exporter = spans.recording(monkeypatch)
    with caplog.at_level(logging.INFO, "kvmesh.gateway.requests"):
        RequestLine("http", "r", "m", trace.INVALID_SPAN).end("503")
    (record,) = caplog.records
    assert record.status == "503" and record.ttft_ms is None and not hasattr(record, "trace_id")
    assert not exporter.get_finished_spans()
