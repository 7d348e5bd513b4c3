"""The span helpers: nothing made with tracing off, the trace id only for a recorded span,
failures marked but cancellations not."""

import asyncio

import pytest
from opentelemetry import trace

from kvmesh import telemetry
from tests.support import spans

CALLER = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"


class NoTracer:
    def start_span(self, *args, **kwargs):
        raise AssertionError("a span was made with tracing off")


def test_with_tracing_off_no_span_is_made_and_the_callers_context_goes_on():
    span = telemetry.start_span(NoTracer(), "x", telemetry.extract({"traceparent": CALLER}))
    assert not span.is_recording()
    assert telemetry.carrier(trace.set_span_in_context(span))["traceparent"] == CALLER
    assert telemetry.response_headers(span) == {} and telemetry.trace_ids(span) == {}


def test_a_recorded_span_continues_the_caller_and_names_its_trace(monkeypatch):
    exporter = spans.recording(monkeypatch)
    span = telemetry.start_span(trace.get_tracer("t"), "x", telemetry.extract({"traceparent": CALLER}))
    span.end()
    assert telemetry.response_headers(span) == {telemetry.TRACE_ID_HEADER: "ab" * 16}
    assert telemetry.trace_ids(span)["trace_id"] == "ab" * 16
    (done,) = exporter.get_finished_spans()
    assert done.parent.span_id == int("cd" * 8, 16)


@pytest.mark.parametrize(("error", "failed"), [(ValueError("bad"), True), (asyncio.CancelledError(), False)])
def test_ending_marks_a_failure_but_not_a_cancellation(monkeypatch, error, failed):
    exporter = spans.recording(monkeypatch)
    with pytest.raises(type(error)), telemetry.ending(telemetry.start_span(trace.get_tracer("t"), "x")):
        raise error
    (done,) = exporter.get_finished_spans()
    assert (not done.status.is_ok) is failed
