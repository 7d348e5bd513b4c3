"""JSON log lines: the fields, the current span's trace id, a call's extra fields, tracebacks."""

import json
import logging

import pytest
from opentelemetry import trace

from kvmesh import logs
from tests.support import spans


def record(message="hello %s", args=("world",), exc_info=None, **extra) -> logging.LogRecord:
    r = logging.LogRecord("kvmesh.test", logging.WARNING, __file__, 1, message, args, exc_info)
    r.__dict__.update(extra)
    return r


def test_a_line_is_one_json_object_with_the_fields():
    line = json.loads(logs.JsonFormatter("kvmesh-router").format(record()))
    assert line.keys() == {"time", "level", "logger", "message", "service"}
    assert (line["level"], line["logger"], line["message"], line["service"]) == (
        "WARNING", "kvmesh.test", "hello world", "kvmesh-router",
    )  # fmt: skip
    assert line["time"].endswith("+00:00")


def test_a_line_carries_the_current_spans_ids_and_the_calls_extra_fields(monkeypatch):
    spans.recording(monkeypatch)
    formatter = logs.JsonFormatter("kvmesh-gateway")
    with trace.get_tracer("t").start_as_current_span("s") as span:
        line = json.loads(formatter.format(record(request_id="r1", tokens=3)))
    ctx = span.get_span_context()
    assert line["trace_id"] == f"{ctx.trace_id:032x}" and line["span_id"] == f"{ctx.span_id:016x}"
    assert line["request_id"] == "r1" and line["tokens"] == 3
    given = json.loads(formatter.format(record(trace_id="ab" * 16)))  # outside the span: the one passed in
    assert given["trace_id"] == "ab" * 16


def test_no_trace_id_without_a_span_and_a_traceback_as_one_field():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        line = json.loads(logs.JsonFormatter("s").format(record(exc_info=sys.exc_info(), when=object())))
    assert "trace_id" not in line
    assert "ValueError: boom" in line["exception"] and "\n" in line["exception"]
    assert line["when"].startswith("<object")  # what JSON cannot hold goes as its str()


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("true", True), ("0", False), ("", False)])
def test_the_environment_switch(monkeypatch, value, expected):
    monkeypatch.setenv(logs.LOG_JSON_ENV, value)
    assert logs.json_from_env() is expected
