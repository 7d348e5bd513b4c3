"""Metrics and traces for every service, wrapped around handlers, never inlined in them.

Tracing exports nothing unless the standard OpenTelemetry setting asks for it:
OTEL_TRACES_EXPORTER=otlp (OTEL_EXPORTER_OTLP_ENDPOINT, ...) or console. Context always travels:
W3C traceparent in gRPC metadata, and into Triton requests as request parameters.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import contextmanager
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
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
    trace.set_tracer_provider(provider)


def start_metrics_server(host: str, port: int) -> int:
    server, _ = start_http_server(port, addr=host)
    return server.server_port


def carrier(ctx: otel_context.Context | None = None) -> dict[str, str]:
    """A trace context (default: the current one) as W3C headers; empty when nothing is traced."""
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
        try:
            with self.tracer.start_as_current_span(method, context=parent, kind=trace.SpanKind.SERVER):
                yield
                code = _code_name(context)
        except BaseException:
            code = _code_name(context, default="UNKNOWN")
            raise
        finally:
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
