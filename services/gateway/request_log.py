"""One request as its front saw it, told once when it ends: a `kvmesh.stream` span from its first
chunk to its end (one span, its counts as attributes: never one per token), and one log line
(logger `kvmesh.gateway.requests`, INFO, with --log-requests) carrying the request's trace id. The fronts call `saw`
for each chunk they send and `end` where they count the request's outcome (metrics.REQUESTS)."""

from __future__ import annotations

import logging
import time

from opentelemetry import trace

from kvmesh import telemetry
from services.gateway.generation import Chunk

LOGGER = "kvmesh.gateway.requests"
log = logging.getLogger(LOGGER)
TRACER = trace.get_tracer("kvmesh.gateway")


class RequestLine:
    def __init__(
        self, front: str, request_id: str, model: str, root: trace.Span, client_request_id: str = "", key: str = ""
    ) -> None:
        """`root`: the request's span at the front; `client_request_id`: the label the client gave
        it, if any; `key`: its API key's name (auth on)."""
        self.front, self.request_id, self.model, self.root = front, request_id, model, root
        self.client_request_id, self.key = client_request_id, key
        self.start = time.perf_counter()
        self.first_at: float | None = None
        self.last: Chunk | None = None
        self.chunks = 0
        self.stream: trace.Span | None = None
        self.ended = False

    def saw(self, chunk: Chunk) -> None:
        if self.first_at is None:
            self.first_at = time.perf_counter()
            if self.root.is_recording():
                self.stream = telemetry.start_span(TRACER, "kvmesh.stream", trace.set_span_in_context(self.root))
        self.chunks += 1
        self.last = chunk

    def end(self, status: str) -> None:
        """`status`: the outcome as metrics.REQUESTS counts it (an HTTP status, a gRPC code, ...);
        the first call counts, later ones do nothing."""
        if self.ended:
            return
        self.ended = True
        usage = self.last.usage if self.last is not None else None
        if self.stream is not None:
            completion = usage.completion_tokens if usage is not None else 0
            self.stream.set_attributes({"kvmesh.chunks": self.chunks, "kvmesh.completion_tokens": completion,
                                        "kvmesh.status": status})  # fmt: skip
            self.stream.end()
        if not log.isEnabledFor(logging.INFO):
            return
        now = time.perf_counter()
        fields = {
            "request_id": self.request_id,
            "client_request_id": self.client_request_id,
            "key": self.key,
            "front": self.front,
            "model": self.model,
            "status": status,
            "finish_reason": self.last.finish_reason if self.last is not None else None,
            "prompt_tokens": usage.prompt_tokens if usage is not None else None,
            "completion_tokens": usage.completion_tokens if usage is not None else None,
            "cached_tokens": usage.cached_tokens if usage is not None else None,
            "ttft_ms": round((self.first_at - self.start) * 1000, 1) if self.first_at is not None else None,
            "e2e_ms": round((now - self.start) * 1000, 1),
            "worker": self.last.worker_id if self.last is not None else "",
            **telemetry.trace_ids(self.root),
        }
        log.info(
            "request %s%s %s %s: %s+%s tokens (%s cached), ttft %s ms, e2e %s ms, worker %s",
            self.request_id, f" ({self.client_request_id})" if self.client_request_id else "", self.model, status,
            fields["prompt_tokens"], fields["completion_tokens"], fields["cached_tokens"], fields["ttft_ms"],
            fields["e2e_ms"], fields["worker"] or "-", extra=fields,
        )  # fmt: skip
