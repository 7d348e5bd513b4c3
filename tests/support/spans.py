"""kvmesh's spans recorded in memory, for one test: `recording(monkeypatch)` turns them on (the
process's tracer provider is set once; the switch is put back after the test) and returns the
exporter, emptied."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kvmesh import telemetry

_EXPORTER = InMemorySpanExporter()
_PROVIDER = TracerProvider()
_PROVIDER.add_span_processor(SimpleSpanProcessor(_EXPORTER))


def recording(monkeypatch) -> InMemorySpanExporter:
    if trace.get_tracer_provider() is not _PROVIDER:
        trace.set_tracer_provider(_PROVIDER)
    monkeypatch.setattr(telemetry, "_exporting", True)
    _EXPORTER.clear()
    return _EXPORTER


def tree(exporter: InMemorySpanExporter) -> set[tuple[str, str | None]]:
    """(span name, its parent's name) of every span exported: what a span tree test compares."""
    spans = exporter.get_finished_spans()
    names = {s.context.span_id: s.name for s in spans}
    return {(s.name, names.get(s.parent.span_id) if s.parent else None) for s in spans}
