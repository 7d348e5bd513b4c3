"""One request's life on an engine: stream deltas out, abort on client cancellation, always end
with exactly one final message (a delta or an error)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

import msgspec
from opentelemetry import context as otel_context
from opentelemetry import trace

from engines.phase_spans import PhaseSpans
from engines.request import EngineRequest
from kvmesh import telemetry
from kvmesh.engine_wire import EngineDelta

log = logging.getLogger(__name__)
TRACER = trace.get_tracer("kvmesh.engine")

# request.is_cancelled() is an IPC round trip to Triton: poll it a few times a second, not per token.
CANCEL_POLL_S = 0.25


class Engine(Protocol):
    def generate(self, request: EngineRequest) -> AsyncIterator[EngineDelta]: ...

    async def abort(self, request_id: str) -> None: ...


# Both resolve once Triton has the response: a request sends its next delta only then.
Send = Callable[[EngineDelta, bool], Awaitable[None]]
SendError = Callable[[str], Awaitable[None]]
# Asks Triton whether the client went away (False once the final response is out).
IsCancelled = Callable[[], Awaitable[bool]]


async def serve_request(
    engine: Engine,
    request: EngineRequest,
    send: Send,
    send_error: SendError,
    is_cancelled: IsCancelled,
) -> str:
    """Returns how it ended: "finished", "cancelled" or "error"."""
    parent = telemetry.extract(request.trace_headers)
    attributes = {"kvmesh.request_id": request.request_id, "kvmesh.prompt_tokens": len(request.prompt_token_ids)}
    span = telemetry.start_span(TRACER, "engine.request", parent, trace.SpanKind.SERVER, attributes)
    # Current while it runs: the phases' spans go under it, and log lines carry its trace id.
    token = otel_context.attach(trace.set_span_in_context(span, parent))
    try:
        outcome = await _serve(engine, request, send, send_error, is_cancelled)
        span.set_attribute("kvmesh.outcome", outcome)
        return outcome
    finally:
        otel_context.detach(token)
        span.end()


async def _serve(engine: Engine, request: EngineRequest, send: Send, send_error: SendError, is_cancelled) -> str:
    producer = asyncio.ensure_future(_forward(engine, request, send))
    watcher = asyncio.ensure_future(_wait_cancelled(is_cancelled))
    try:
        done, _ = await asyncio.wait({producer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if producer in done:
            producer.result()
            return "finished"
        producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)
        await engine.abort(request.request_id)
        await send(EngineDelta([], "abort", len(request.prompt_token_ids), 0), True)
        log.info("request %s: cancelled by the client, aborted in the engine", request.request_id)
        return "cancelled"
    except Exception as e:  # one request's failure never sinks the model
        log.exception("request %s failed", request.request_id)
        await asyncio.gather(engine.abort(request.request_id), return_exceptions=True)
        await send_error(f"engine error: {type(e).__name__}: {e}")
        return "error"
    finally:
        watcher.cancel()


async def _forward(engine: Engine, request: EngineRequest, send: Send) -> None:
    last: EngineDelta | None = None
    held: list[int] = []  # tokens waiting for the request's response interval
    next_send = 0.0  # the first token goes at once: the router counts the prefill done then
    with PhaseSpans(len(request.prompt_token_ids), request.kv_transfer_params) as phases:
        async for delta in engine.generate(request):
            last = delta
            phases.saw(delta)
            if delta.finish_reason is not None:
                await send(msgspec.structs.replace(delta, token_ids=held + delta.token_ids), True)
                return
            held += delta.token_ids  # vLLM yields empty deltas now and then
            if held and (now := time.monotonic()) >= next_send:
                await send(msgspec.structs.replace(delta, token_ids=held), False)
                held, next_send = [], now + request.response_interval_s
    # The engine ended the stream without a finish reason (e.g. aborted elsewhere); held tokens
    # were never seen, so a retry elsewhere makes them again.
    await send(EngineDelta([], "abort", len(request.prompt_token_ids), last.cached_tokens if last else 0), True)


async def _wait_cancelled(is_cancelled: IsCancelled) -> None:
    # First look after one interval: a request done sooner never costs a call.
    while True:
        await asyncio.sleep(CANCEL_POLL_S)
        if await is_cancelled():
            return
