"""Metrics and traces for every service, wrapped around handlers, never inlined in them.

Tracing exports nothing unless the standard OpenTelemetry setting asks for it:
OTEL_TRACES_EXPORTER=otlp (OTEL_EXPORTER_OTLP_ENDPOINT, ...) or console. Context always travels:
W3C traceparent in gRPC metadata, and into Triton requests as request parameters. The span tree
of one request is in docs/observability-tracing.md.

With tracing off, `start_span` makes no span at all (the parent's context goes on unchanged):
OpenTelemetry's no-op tracer still costs microseconds a span, and a request makes several.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import contextmanager
from typing import Any

import grpc
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from prometheus_client import Counter, Gauge, Histogram, start_http_server

RPC_REQUESTS = Counter("kvmesh_rpc_requests", "gRPC requests handled", ["method", "code"])
# livesum: a service run as several processes (the gateway's --procs) reports the sum of the live ones.
RPC_IN_FLIGHT = Gauge("kvmesh_rpc_in_flight", "gRPC requests being handled", ["method"], multiprocess_mode="livesum")
RPC_SECONDS = Histogram("kvmesh_rpc_duration_seconds", "gRPC handling time", ["method"])


def setup_tracing(service_name: str) -> None:
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "none").strip().lower()
    if exporter_name in ("", "none"):
        return
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", f"kvmesh-{service_name}")})
    )
    if exporter_name == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    elif exporter_name == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        raise SystemExit(f"OTEL_TRACES_EXPORTER={exporter_name!r}: kvmesh supports otlp, console or none")
    install(provider)


_exporting = False  # set once a tracer provider that exports is installed


def install(provider: trace.TracerProvider) -> None:
    """Makes `provider` the process's and turns the spans of `start_span` on."""
    global _exporting
    trace.set_tracer_provider(provider)
    _exporting = True


def start_span(
    tracer: trace.Tracer, name: str, context: otel_context.Context | None = None,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL, attributes: dict[str, Any] | None = None,
) -> trace.Span:  # fmt: skip
    """A span to end explicitly, or with tracing off the parent's non-recording span (ending it
    does nothing), for nothing to record."""
    if not _exporting:
        return trace.get_current_span(context)
    return tracer.start_span(name, context, kind, attributes)


class ending:
    """`with ending(span):` ends `span` on the way out, marked failed by an exception passing
    through (a cancellation is no failure); a class, not a generator, for its few hundred ns."""

    def __init__(self, span: trace.Span) -> None:
        self.span = span

    def __enter__(self) -> trace.Span:
        return self.span

    def __exit__(self, kind, error, _tb) -> None:
        fail(self.span, error)
        self.span.end()


def fail(span: trace.Span, error: BaseException | None) -> None:
    """Marks `span` failed by `error` (None, a cancellation or a generator closed: not failed)."""
    if error is not None and isinstance(error, Exception) and span.is_recording():
        span.record_exception(error)
        span.set_status(trace.Status(trace.StatusCode.ERROR, str(error)))


TRACE_ID_HEADER = "x-trace-id"


def _recorded(span: trace.Span) -> trace.SpanContext | None:
    """The span's context if this process records it (ended or not): tracing on, sampled."""
    ctx = span.get_span_context()
    return ctx if _exporting and ctx.is_valid and ctx.trace_flags.sampled else None


def trace_ids(span: trace.Span) -> dict[str, str]:
    """The trace and span ids of a recorded span as hex, for log lines; empty otherwise."""
    if (ctx := _recorded(span)) is None:
        return {}
    return {"trace_id": trace.format_trace_id(ctx.trace_id), "span_id": trace.format_span_id(ctx.span_id)}


def response_headers(span: trace.Span) -> dict[str, str]:
    """What an answer tells its client of the trace it made: its id, when one is recorded."""
    if (ctx := _recorded(span)) is None:
        return {}
    return {TRACE_ID_HEADER: trace.format_trace_id(ctx.trace_id)}


def start_metrics_server(host: str, port: int) -> int:
    server, _ = start_http_server(port, addr=host)
    return server.server_port


def carrier(ctx: otel_context.Context | None = None) -> dict[str, str]:
    """A trace context (default: the current one) as W3C headers; empty when nothing is traced."""
    # Tracing off and no caller's context to pass on: ~10 µs of propagators saved on each call.
    if not _exporting and not trace.get_current_span(ctx).get_span_context().is_valid and not baggage.get_all(ctx):
        return {}
    headers: dict[str, str] = {}
    propagate.inject(headers, context=ctx)
    return headers


def extract(headers) -> otel_context.Context:
    """The caller's trace context from W3C headers (HTTP headers, gRPC metadata, request parameters)."""
    return propagate.extract(headers)


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """Per RPC: a span continuing the caller's trace, request/error counts, in-flight, duration."""

    def __init__(self, service_name: str):
        self.tracer = trace.get_tracer(f"kvmesh.{service_name}")

    async def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        parent = extract({k: v for k, v in (details.invocation_metadata or ()) if isinstance(v, str)})

        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                with self._observe(method, parent, context):
                    return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            inner_stream = handler.unary_stream

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                with self._observe(method, parent, context):
                    async for item in inner_stream(request, context):
                        yield item

            return grpc.unary_stream_rpc_method_handler(
                stream, handler.request_deserializer, handler.response_serializer
            )
        return handler

    @contextmanager
    def _observe(self, method: str, parent: otel_context.Context, context: grpc.aio.ServicerContext):
        start = time.perf_counter()
        RPC_IN_FLIGHT.labels(method).inc()
        code = "OK"
        span = start_span(self.tracer, method, parent, trace.SpanKind.SERVER)
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        try:
            yield
            code = _code_name(context)
        except BaseException as e:
            code = _code_name(context, default="UNKNOWN")
            fail(span, e)
            raise
        finally:
            otel_context.detach(token)
            span.set_attribute("rpc.grpc.status_code", code)
            span.end()
            RPC_IN_FLIGHT.labels(method).dec()
            RPC_REQUESTS.labels(method, code).inc()
            RPC_SECONDS.labels(method).observe(time.perf_counter() - start)


def _code_name(context: grpc.aio.ServicerContext, default: str = "OK") -> str:
    code = context.code()
    if code is None:
        return default
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


class ClientInterceptor(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    """Puts the current trace context into every outgoing call's metadata."""

    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(_with_trace(details), request)

    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(_with_trace(details), request)


def _with_trace(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    headers = carrier()
    if not headers or any(key == "traceparent" for key, _ in (details.metadata or ())):
        return details  # nothing to carry, or the caller set the context explicitly
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    for key, value in headers.items():
        metadata.add(key, value)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )
