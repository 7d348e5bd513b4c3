"""One request's life at the gateway, shared by both fronts: route → stream from the engine →
detokenize → chunks; the router is told when prefill is done and when the request ends, and
metrics are taken on the way."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from opentelemetry import context as otel_context
from opentelemetry import trace

from kvmesh import hashing, telemetry
from kvmesh.errors import Unavailable
from services.gateway import metrics
from services.gateway.detokenizer import TextStream
from services.gateway.engine_client import TritonPool
from services.gateway.router_client import RouterClient
from services.gateway.served import ServedModel, ServedModels


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


@dataclass
class Chunk:
    text: str
    token_ids: list[int]
    # Set on the last chunk only, with usage.
    finish_reason: str | None = None
    usage: Usage | None = None
    worker_id: str = ""


TRACER = trace.get_tracer("kvmesh.gateway")


def new_request_id() -> str:
    return uuid.uuid4().hex


class Generator:
    def __init__(self, router: RouterClient, engines: TritonPool, served: ServedModels):
        self.router = router
        self.engines = engines
        self.served = served

    async def generate(
        self,
        model: ServedModel,
        prompt_ids: list[int],
        sampling: dict,
        request_id: str,
        parent: otel_context.Context | None = None,
    ) -> AsyncIterator[Chunk]:
        """`parent`: the caller's trace context (default: the current one)."""
        start = time.perf_counter()
        # One span for the request's whole life. It is passed explicitly, not made current: the
        # chunks may be consumed from more than one task.
        span = TRACER.start_span(
            "kvmesh.generate", context=parent, attributes={"kvmesh.request_id": request_id, "kvmesh.model": model.name}
        )
        trace_headers = telemetry.carrier(trace.set_span_in_context(span))
        try:
            block_size = self.served.block_size(model.name)
            block_hashes = hashing.sequence_hashes(prompt_ids, block_size, model.name) if block_size else []
            decision = await self.router.route(
                model.name, request_id, len(prompt_ids), block_hashes, block_size, trace_headers
            )
        except Exception:
            span.end()
            raise
        worker = decision.worker
        span.set_attribute("kvmesh.worker", worker.id)
        text = TextStream(model.tokenizer.backend, sampling.get("stop", ()))
        produced = 0
        last_token_at = None
        metrics.IN_FLIGHT.inc()
        stream = self.engines.stream(worker, request_id, prompt_ids, sampling, trace_headers)
        try:
            async for chunk in stream:
                now = time.perf_counter()
                if chunk.token_ids:
                    if last_token_at is None:
                        metrics.TTFT.observe(now - start)
                        self.router.mark_prefilled(request_id)
                    else:
                        gap = (now - last_token_at) / len(chunk.token_ids)
                        for _ in chunk.token_ids:
                            metrics.ITL.observe(gap)
                    last_token_at = now
                produced += len(chunk.token_ids)
                delta = text.push(chunk.token_ids)
                finish = "stop" if text.stopped else chunk.finish_reason
                if finish == "abort":
                    raise Unavailable(f"worker {worker.id} aborted the request")
                if finish is None:
                    if delta or chunk.token_ids:
                        yield Chunk(delta, chunk.token_ids, worker_id=worker.id)
                    continue
                usage = Usage(len(prompt_ids), produced, chunk.cached_tokens)
                metrics.E2E.observe(now - start)
                metrics.PROMPT_TOKENS.inc(usage.prompt_tokens)
                metrics.COMPLETION_TOKENS.inc(usage.completion_tokens)
                metrics.CACHED_TOKENS.inc(usage.cached_tokens)
                yield Chunk(delta + text.flush(), chunk.token_ids, finish, usage, worker.id)
                return
        finally:
            # Leaving early (stop string, client gone) closes the engine stream, which aborts it.
            await stream.aclose()
            metrics.IN_FLIGHT.dec()
            self.router.release(request_id)
            span.end()
