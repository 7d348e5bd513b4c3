"""One request's life at the gateway, shared by both fronts: route → stream from the engine →
detokenize → chunks; the router is told when prefill is done and when the request ends, and
metrics are taken on the way."""

from __future__ import annotations

import logging
import random
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
from services.gateway.phases import Phases
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
log = logging.getLogger(__name__)


def new_request_id() -> str:
    return uuid.uuid4().hex


class Generator:
    def __init__(
        self, router: RouterClient, engines: TritonPool, served: ServedModels, prefill_timeout_s: float = 30.0,
        max_migrations: int = 1,
    ):  # fmt: skip
        self.router = router
        self.phases = Phases(engines, prefill_timeout_s)
        self.served = served
        self.max_migrations = max_migrations

    async def generate(
        self,
        model: ServedModel,
        prompt_ids: list[int],
        sampling: dict,
        request_id: str,
        parent: otel_context.Context | None = None,
    ) -> AsyncIterator[Chunk]:
        """`parent`: the caller's trace context (default: the current one).

        If the worker fails mid-stream (unreachable, killed, aborted), the request moves to
        another worker: the prompt plus the tokens already sent, for the tokens still owed, so
        the client sees every token once."""
        start = time.perf_counter()
        # One span for the request's whole life. It is passed explicitly, not made current: the
        # chunks may be consumed from more than one task.
        span = TRACER.start_span(
            "kvmesh.generate", context=parent, attributes={"kvmesh.request_id": request_id, "kvmesh.model": model.name}
        )
        trace_headers = telemetry.carrier(trace.set_span_in_context(span))
        text = TextStream(model.tokenizer.backend, sampling.get("stop", ()))
        sent: list[int] = []
        failed: list[str] = []
        first_token_at = last_token_at = None
        cached_tokens = 0
        metrics.IN_FLIGHT.inc()
        try:
            while True:
                attempt_id = request_id if not failed else f"{request_id}-m{len(failed)}"
                ids = prompt_ids + sent
                owed = {**sampling, "max_tokens": sampling["max_tokens"] - len(sent)}
                decision = await self._route(model, attempt_id, ids, owed, failed, trace_headers)
                worker = decision.worker
                span.set_attribute("kvmesh.worker", worker.id)
                if decision.HasField("prefill_worker"):
                    span.set_attribute("kvmesh.prefill_worker", decision.prefill_worker.id)
                    # Both phases sample alike, so the decode's first token is the prefill's.
                    owed.setdefault("seed", random.getrandbits(31))
                stream = self.phases.run(decision, attempt_id, ids, owed, trace_headers)
                try:
                    async for chunk in stream:
                        now = time.perf_counter()
                        if chunk.token_ids:
                            if first_token_at is None:
                                first_token_at = now
                                metrics.TTFT.observe(now - start)
                                self.router.mark_prefilled(attempt_id)
                            elif last_token_at is not None:
                                gap = (now - last_token_at) / len(chunk.token_ids)
                                for _ in chunk.token_ids:
                                    metrics.ITL.observe(gap)
                            last_token_at = now
                        sent += chunk.token_ids
                        delta = text.push(chunk.token_ids)
                        finish = "stop" if text.stopped else chunk.finish_reason
                        if finish == "abort":
                            raise Unavailable(f"worker {worker.id} aborted the request")
                        if finish is None:
                            if delta or chunk.token_ids:
                                yield Chunk(delta, chunk.token_ids, worker_id=worker.id)
                            continue
                        cached_tokens = cached_tokens if failed else chunk.cached_tokens
                        usage = Usage(len(prompt_ids), len(sent), cached_tokens)
                        metrics.E2E.observe(now - start)
                        metrics.PROMPT_TOKENS.inc(usage.prompt_tokens)
                        metrics.COMPLETION_TOKENS.inc(usage.completion_tokens)
                        metrics.CACHED_TOKENS.inc(usage.cached_tokens)
                        yield Chunk(delta + text.flush(), chunk.token_ids, finish, usage, worker.id)
                        return
                    raise Unavailable(f"worker {worker.id}: the stream ended without a final response")
                except Unavailable as e:
                    if len(failed) >= self.max_migrations or len(sent) >= sampling["max_tokens"]:
                        raise
                    failed.append(worker.id)
                    metrics.MIGRATIONS.inc()
                    log.warning("request %s: %s; moving it with %d tokens sent", request_id, e, len(sent))
                finally:
                    # Leaving early (stop string, client gone) closes the engine stream, which aborts it.
                    await stream.aclose()
                    self.router.release(attempt_id)
        finally:
            metrics.IN_FLIGHT.dec()
            span.end()

    async def _route(self, model, request_id, ids, sampling, failed, trace_headers):
        block_size = self.served.block_size(model.name)
        block_hashes = hashing.sequence_hashes(ids, block_size, model.name) if block_size else []
        return await self.router.route(
            model.name, request_id, len(ids), block_hashes, block_size, trace_headers,
            exclude=failed,
            # One output token is all prefill makes: nothing is left for a decode worker.
            aggregated_only=sampling["max_tokens"] <= 1,
        )  # fmt: skip
