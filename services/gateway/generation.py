"""One request's life at the gateway, shared by both fronts: route → stream from the engine →
detokenize → chunks; the router is told when prefill is done and when the request ends, and
metrics are taken on the way."""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field

import msgspec
from opentelemetry import context as otel_context
from opentelemetry import trace

from kvmesh import hashing, telemetry
from kvmesh.api_keys import Priority
from kvmesh.errors import DeadlineExceeded, Unavailable
from kvmesh.sampling import SamplingParams
from services.gateway import metrics
from services.gateway.admission import Admission
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


@dataclass
class Ticket:
    """Who a request is for the fair queue (admission.py), and how long it waited there."""

    key: str = "anonymous"
    priority: Priority = "normal"
    cost: int = 0  # tokens: prompt + most it may generate
    queued_s: float = 0.0


@dataclass
class _Progress:
    """What the client has been sent, across the workers a request ran on, and its latencies."""

    start: float
    text: TextStream
    sent: list[int] = field(default_factory=list)
    first_token_at: float | None = None
    last_token_at: float | None = None

    def took(self, token_ids: list[int]) -> bool:
        """Counts the tokens in; True for the request's first token."""
        self.sent += token_ids
        if not token_ids:
            return False
        now, first = time.perf_counter(), self.first_token_at is None
        if first:
            self.first_token_at = now
            metrics.TTFT.observe(now - self.start)
        elif self.last_token_at is not None:
            gap = (now - self.last_token_at) / len(token_ids)
            for _ in token_ids:
                metrics.ITL.observe(gap)
        self.last_token_at = now
        return first


class Generator:
    def __init__(
        self, router: RouterClient, engines: TritonPool, served: ServedModels, prefill_timeout_s: float = 30.0,
        max_migrations: int = 1, whole_answer_interval_ms: float = 0.0,
        admission: Callable[[], Admission] | None = None, request_timeout_s: float = 600.0,
    ):  # fmt: skip
        """`admission`: makes the queue where a model's requests wait when every worker of that model
        is full (one per model: a full model never holds up another's); None: they fail at once.
        `request_timeout_s`: the longest a request may take, unless its client gives less."""
        self.request_timeout_s = request_timeout_s
        self.router = router
        self._new_admission = admission
        self._admissions: dict[str, Admission] = {}
        self.phases = Phases(engines, prefill_timeout_s)
        self.served = served
        self.max_migrations = max_migrations
        self.whole_answer_interval_ms = whole_answer_interval_ms

    async def generate(
        self,
        model: ServedModel,
        prompt_ids: list[int],
        sampling: SamplingParams,
        request_id: str,
        parent: otel_context.Context | None = None,
        whole: bool = False,
        ticket: Ticket | None = None,
        timeout_s: float | None = None,
    ) -> AsyncIterator[Chunk]:
        """`parent`: the caller's trace context (default: the current one). `whole`: the caller
        answers only once the request is done (non-streaming), so the engine need not send each token.
        `ticket`: its place in the fair queue when the mesh is full (default: anonymous, normal).
        `timeout_s`: the time its client gave it (a gRPC deadline), if less than request_timeout_s.

        If the worker fails mid-stream (unreachable, killed, aborted, hung), the request moves to
        another worker: the prompt plus the tokens already sent, for the tokens still owed, so
        the client sees every token once. At its deadline it fails with DeadlineExceeded, waiting
        for a worker or on one; the engine request is cancelled."""
        if timeout_s is not None and timeout_s < self.request_timeout_s:
            limit_s, whose = timeout_s, "the client's deadline"
        else:
            limit_s, whose = self.request_timeout_s, "the gateway's --request-timeout-s"
        deadline = time.monotonic() + limit_s
        # One span for the request's whole life. It is passed explicitly, not made current: the
        # chunks may be consumed from more than one task.
        span = TRACER.start_span(
            "kvmesh.generate", context=parent, attributes={"kvmesh.request_id": request_id, "kvmesh.model": model.name}
        )
        progress = _Progress(time.perf_counter(), TextStream(model.tokenizer.backend, sampling.stop))
        failed: list[str] = []
        interval_ms = self.whole_answer_interval_ms if whole else 0.0
        ticket = ticket or Ticket(cost=len(prompt_ids) + sampling.max_tokens)
        metrics.IN_FLIGHT.inc()
        metrics.PROMPT_LENGTH.observe(len(prompt_ids))
        try:
            while True:
                attempt = self._attempt(
                    model, prompt_ids, sampling, request_id, progress, failed, span, interval_ms, ticket, deadline
                )
                tried = len(failed)
                try:
                    async with aclosing(attempt) as chunks:
                        async for chunk in chunks:
                            yield chunk
                    return
                except Unavailable as e:
                    worker_failed = len(failed) > tried  # not the router finding no worker
                    nothing_owed = len(progress.sent) >= sampling.max_tokens
                    if not worker_failed or nothing_owed or len(failed) > self.max_migrations:
                        raise
                    metrics.MIGRATIONS.inc()
                    log.warning("request %s: %s; moving it with %d tokens sent", request_id, e, len(progress.sent))
        except DeadlineExceeded as e:
            metrics.DEADLINES_EXCEEDED.inc()
            log.warning("request %s: %s (%s)", request_id, whose, e)
            raise DeadlineExceeded(
                f"the request did not finish within {whose} ({limit_s:g}s): {len(progress.sent)} of "
                f"{sampling.max_tokens} tokens sent; it was cancelled"
            ) from None
        finally:
            metrics.IN_FLIGHT.dec()
            span.end()

    async def _attempt(
        self, model, prompt_ids, sampling, request_id, progress: _Progress, failed: list[str], span, interval_ms: float,
        ticket: Ticket, deadline: float,
    ):  # fmt: skip
        """One worker's (or one prefill + decode pair's) go at what the request still owes, by
        `deadline` (time.monotonic()); the worker joins `failed` if it fails (Unavailable)."""
        attempt_id = f"{request_id}-m{len(failed)}" if failed else request_id
        ids = prompt_ids + progress.sent
        owed = msgspec.structs.replace(sampling, max_tokens=sampling.max_tokens - len(progress.sent))
        in_request = trace.set_span_in_context(span)
        trace_headers = telemetry.carrier(in_request)
        try:
            # Routing is bounded by what is left (a Route given up on is released by the session).
            async with asyncio.timeout(deadline - time.monotonic()) as left:
                routing = telemetry.start_span(TRACER, "kvmesh.routing", in_request, trace.SpanKind.CLIENT)
                with telemetry.ending(routing):  # tracing off: `routing` is `span`, nothing new to carry
                    in_route = trace.set_span_in_context(routing)
                    headers = trace_headers if routing is span else telemetry.carrier(in_route)
                    decision = await self._admitted_route(ticket, model, attempt_id, ids, owed, failed, headers)
        except TimeoutError:
            if left.expired():
                raise DeadlineExceeded("no worker took it in time") from None
            raise
        worker = decision.worker
        span.set_attribute("kvmesh.worker", worker.id)
        if decision.HasField("prefill_worker"):
            span.set_attribute("kvmesh.prefill_worker", decision.prefill_worker.id)
            if owed.seed is None:  # both phases sample alike, so the decode's first token is the prefill's
                owed.seed = random.getrandbits(31)
        prefill_fell_back: list[str] = []
        stream = self.phases.run(
            decision, attempt_id, ids, owed, trace_headers, interval_ms, deadline, prefill_fell_back
        )
        # The engine's, for the router to check its prediction: only for a request that ends on the
        # worker(s) it was first routed to (not after a move, a failure, a prefill done by the decode
        # worker instead, or a client gone).
        checked_cached_tokens: int | None = None
        try:
            async for chunk in stream:
                if progress.took(chunk.token_ids):
                    self.router.mark_prefilled(attempt_id)
                delta = progress.text.push(chunk.token_ids)
                finish = "stop" if progress.text.stopped else chunk.finish_reason
                if finish == "abort":
                    raise Unavailable(f"worker {worker.id} aborted the request")
                if finish is None:
                    if delta or chunk.token_ids:
                        yield Chunk(delta, chunk.token_ids, worker_id=worker.id)
                    continue
                # After a move the cache state of the original prompt is not known.
                usage = Usage(len(prompt_ids), len(progress.sent), 0 if failed else chunk.cached_tokens)
                checked_cached_tokens = None if failed or prefill_fell_back else chunk.cached_tokens
                metrics.E2E.observe(time.perf_counter() - progress.start)
                metrics.PROMPT_TOKENS.inc(usage.prompt_tokens)
                metrics.COMPLETION_TOKENS.inc(usage.completion_tokens)
                metrics.OUTPUT_LENGTH.observe(usage.completion_tokens)
                metrics.CACHED_TOKENS.inc(usage.cached_tokens)
                yield Chunk(delta + progress.text.flush(), chunk.token_ids, finish, usage, worker.id)
                return
            raise Unavailable(f"worker {worker.id}: the stream ended without a final response")
        except Unavailable:
            failed.append(worker.id)
            raise
        finally:
            # Leaving early (stop string, client gone) closes the engine stream, which aborts it.
            await stream.aclose()
            self.router.release(attempt_id, checked_cached_tokens)
            if (admission := self._admissions.get(model.name)) is not None:
                admission.released()

    async def _admitted_route(self, ticket: Ticket, model: ServedModel, *route_args):
        if self._new_admission is None:
            return await self._route(model, *route_args)
        admission = self._admissions.get(model.name)
        if admission is None:
            admission = self._admissions[model.name] = self._new_admission()
        decision, queued_s = await admission.run(
            ticket.key, ticket.priority, ticket.cost, lambda: self._route(model, *route_args)
        )
        ticket.queued_s += queued_s
        return decision

    async def _route(self, model, request_id, ids, sampling, failed, trace_headers):
        block_size = self.served.block_size(model.name)
        block_hashes = hashing.sequence_hashes(ids, block_size, model.name) if block_size else []
        return await self.router.route(
            model.name, request_id, len(ids), block_hashes, block_size, trace_headers,
            exclude=failed,
            # One output token is all prefill makes: nothing is left for a decode worker.
            aggregated_only=sampling.max_tokens <= 1,
        )  # fmt: skip
