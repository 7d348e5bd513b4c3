"""OpenAI chat completions and completions over the shared Generator: request → prompt ids and
sampling, chunks → OpenAI JSON or SSE events."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from functools import cached_property

import msgspec
from fastapi import Request
from fastapi.responses import Response
from opentelemetry import context as otel_context
from opentelemetry import trace

from kvmesh import auth, telemetry
from kvmesh.api_keys import ApiKey
from kvmesh.errors import InvalidArgument, KvmeshError
from services.gateway import metrics, prompt
from services.gateway.front_door import FrontDoor
from services.gateway.generation import Chunk, Usage, new_request_id
from services.gateway.limits import InputLimits
from services.gateway.openai.errors import sse_error
from services.gateway.openai.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields
from services.gateway.openai.sse_response import SseResponse
from services.gateway.request_log import RequestLine
from services.gateway.sampling import Sampling, engine_sampling
from services.gateway.served import ServedModel, ServedModels
from services.gateway.slow_clients import DEFAULT_WRITE_TIMEOUT_S
from services.gateway.tokenization import encode_sized

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
TRACER = trace.get_tracer("kvmesh.gateway")


def usage_json(u: Usage) -> dict:
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    }


def _refuse(condition: bool, param: str, message: str) -> None:
    if condition:
        raise InvalidArgument(f"{param}: {message}", param=param)


def _traced(route: str) -> Callable:
    """A handler's request as the root span of its trace (continuing a caller's traceparent),
    current while it is handled, its id in the answer's headers (x-trace-id), errors' too. A
    streamed answer's span ends with its stream (_sse), any other as the handler returns."""

    def wrap(handler: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
        @functools.wraps(handler)
        async def traced(self, request: Request, body) -> Response:
            attributes = {"http.request.method": "POST", "http.route": route}
            parent = telemetry.extract(request.headers)
            span = telemetry.start_span(TRACER, f"POST {route}", parent, trace.SpanKind.SERVER, attributes)
            token = otel_context.attach(trace.set_span_in_context(span, parent))
            try:
                response = await handler(self, request, body)
            except BaseException as e:
                if isinstance(e, KvmeshError):
                    e.headers.update(telemetry.response_headers(span))
                    span.set_attribute("http.response.status_code", e.http_status)
                telemetry.fail(span, e)
                span.end()
                raise
            finally:
                otel_context.detach(token)
            if not isinstance(response, SseResponse):
                span.set_attribute("http.response.status_code", response.status_code)
                span.end()
            return response

        return traced

    return wrap


def _sampling(body: SamplingFields, max_tokens: int | None) -> Sampling:
    return Sampling(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        seed=body.seed,
        stop=body.stop_list(),
        stop_token_ids=body.stop_token_ids or [],
        ignore_eos=body.ignore_eos,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
    )


class OpenAIServing:
    def __init__(
        self, served: ServedModels, front: FrontDoor, default_max_tokens: int, limits: InputLimits,
        write_timeout_s: float = DEFAULT_WRITE_TIMEOUT_S,
    ):  # fmt: skip
        """`write_timeout_s`: the longest a streamed event waits for its client to read (sse_response.py)."""
        self.served = served
        self.front = front
        self.default_max_tokens = default_max_tokens
        self.limits = limits
        self.write_timeout_s = write_timeout_s

    @_traced("/v1/chat/completions")
    async def chat(self, request: Request, body: ChatCompletionRequest):
        model = self.served.get(body.model)
        auth.permit_model(_caller(request), model.name)
        _refuse(body.n != 1, "n", "kvmesh generates one choice per request; use n=1")
        _refuse(bool(body.logprobs) or body.top_logprobs is not None, "logprobs", "log probabilities are not supported")
        _refuse(bool(body.tools), "tools", "tool calling is not supported")
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        sampling = self._sampling(body, max_tokens)
        messages = [(m.role, m.text()) for m in body.messages]
        self.limits.check_messages(len(messages))
        chars = sum(len(text) for _, text in messages)
        self.limits.check_prompt_chars(chars, "messages")
        prompt_ids = await encode_sized(chars, lambda: prompt.chat_ids(model.tokenizer, messages))
        return await self._respond(request, body, model, prompt_ids, sampling, CHAT)

    @_traced("/v1/completions")
    async def completions(self, request: Request, body: CompletionRequest):
        model = self.served.get(body.model)
        auth.permit_model(_caller(request), model.name)
        _refuse(body.n != 1 or (body.best_of or 1) != 1, "n", "kvmesh generates one choice per request")
        _refuse(body.logprobs is not None, "logprobs", "log probabilities are not supported")
        _refuse(body.echo, "echo", "echo is not supported")
        _refuse(body.suffix is not None, "suffix", "suffix is not supported")
        given = body.prompt
        if isinstance(given, list) and given and isinstance(given[0], str):
            _refuse(len(given) != 1, "prompt", "one prompt per request")
            given = given[0]
        sampling = self._sampling(body, body.max_tokens if body.max_tokens is not None else 16)  # OpenAI's default
        if isinstance(given, str):
            self.limits.check_prompt_chars(len(given), "prompt")
            prompt_ids = await encode_sized(len(given), lambda: model.tokenizer.encode(given))
        else:
            prompt_ids = prompt.token_ids(model.tokenizer, given, "prompt")
        return await self._respond(request, body, model, prompt_ids, sampling, COMPLETION)

    def _sampling(self, body: SamplingFields, max_tokens: int | None) -> Sampling:
        sampling = _sampling(body, max_tokens)
        self.limits.check_sampling(sampling)
        return sampling

    async def _respond(self, request, body, model: ServedModel, prompt_ids, sampling: Sampling, fmt: _Format):
        limit = self.served.max_model_len(model.name)
        engine = engine_sampling(sampling, len(prompt_ids), limit, self.default_max_tokens, model.defaults)
        request_id = fmt.id_prefix + new_request_id()
        root = trace.get_current_span()  # _traced's
        root.set_attribute("kvmesh.request_id", request_id)
        caller = _caller(request)
        line = RequestLine("http", request_id, model.name, root, key=caller.name if caller is not None else "")
        admitted = self.front.enter(caller, model, prompt_ids, engine, request_id, otel_context.get_current(),
                                    whole=not body.stream)  # fmt: skip
        chunks = admitted.chunks
        created = int(time.time())
        try:
            if body.stream:
                # Routing failures must still be an HTTP error: wait for the first chunk before answering 200.
                first = await anext(chunks)
                include_usage = bool(body.stream_options and body.stream_options.include_usage)
                events = _sse(first, chunks, SseEvents(fmt, request_id, created, model.name), include_usage, line)
                headers = {**SSE_HEADERS, **admitted.headers(), **telemetry.response_headers(root)}
                return SseResponse(events, request_id, self.write_timeout_s, headers)
            result = await _until_disconnect(request, _collect(chunks, line))
        except KvmeshError as e:
            line.end(str(e.http_status))
            raise
        except BaseException as e:
            line.end("499" if isinstance(e, asyncio.CancelledError) else "500")
            raise
        if result is None:
            metrics.REQUESTS.labels("http", "499").inc()
            line.end("499")
            return Response(status_code=499)  # nobody reads it: the client is gone
        metrics.REQUESTS.labels("http", "200").inc()
        line.end("200")
        headers = {**admitted.headers(), **telemetry.response_headers(root)}
        return json_response(fmt.whole(request_id, created, model.name, *result), headers)


_JSON = msgspec.json.Encoder()


def json_response(body: dict, headers: dict[str, str]) -> Response:
    """JSONResponse's answer, byte for byte (compact, UTF-8), encoded by msgspec for far less CPU."""
    return Response(_JSON.encode(body), media_type="application/json", headers=headers)


def _caller(request: Request) -> ApiKey | None:
    # Set by BearerAuth when auth is on. Not request.state: its miss raises and catches an AttributeError.
    return request.scope.get("state", {}).get("caller")


async def _collect(chunks: AsyncIterator[Chunk], line: RequestLine) -> tuple[str, str, Usage]:
    parts: list[str] = []
    async with aclosing(chunks):  # now: the request's slots are freed as it ends, not when collected
        async for chunk in chunks:
            line.saw(chunk)
            parts.append(chunk.text)
            if chunk.finish_reason:
                return "".join(parts), chunk.finish_reason, chunk.usage
    raise RuntimeError("generation ended without a finish reason")


async def _until_disconnect(request: Request, work):
    """Run `work`, cancelling it (and so the engine request) if the client goes away: then None."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return None
        return task.result()
    finally:
        watcher.cancel()


async def _sse(
    first: Chunk, rest: AsyncIterator[Chunk], events: SseEvents, include_usage: bool, line: RequestLine
) -> AsyncGenerator[str, None]:
    """The events; `line` is told of each chunk and of the end, and the request's span ends with them."""
    is_first = True
    chunk = first
    try:
        try:
            while True:
                line.saw(chunk)
                yield events.chunk(chunk, is_first)
                is_first = False
                if chunk.finish_reason:
                    if include_usage:
                        yield events.usage(chunk.usage)
                    break
                chunk = await anext(rest)
            metrics.REQUESTS.labels("http", "200").inc()
            line.end("200")
        except Exception as e:  # noqa: BLE001 - after the 200 an error can only travel as an event
            metrics.REQUESTS.labels("http", "stream_error").inc()
            line.end("stream_error")
            yield sse_error(e)
        finally:
            await rest.aclose()
        yield "data: [DONE]\n\n"
    finally:
        line.end("499")  # the client left (or stopped reading) before the end
        line.root.end()


class _Format(ABC):
    """The JSON shapes of one endpoint; subclasses say what differs between chat and completions.
    The choice of a chunk neither first nor last depends on its text only (see `text_template`)."""

    id_prefix = ""
    chunk_object = ""
    whole_object = ""

    @abstractmethod
    def chunk_choice(self, c: Chunk, first: bool) -> dict: ...

    @abstractmethod
    def whole_choice(self, text: str, finish: str) -> dict: ...

    @cached_property
    def text_template(self) -> tuple[str, str]:
        """The JSON of a middle chunk's choice before and after its text (json.dumps's own spelling)."""
        marker = json.dumps("\0")  # "\u0000": nowhere else in a choice
        before, after = json.dumps(self.chunk_choice(Chunk("\0", []), False)).split(marker)
        return before, after

    def chunk(self, rid: str, created: int, model: str, c: Chunk, first: bool) -> dict:
        return _envelope(rid, self.chunk_object, created, model, [self.chunk_choice(c, first)])

    def usage_chunk(self, rid: str, created: int, model: str, u: Usage) -> dict:
        return _envelope(rid, self.chunk_object, created, model, [], usage=usage_json(u))

    def whole(self, rid: str, created: int, model: str, text: str, finish: str, u: Usage) -> dict:
        return _envelope(rid, self.whole_object, created, model, [self.whole_choice(text, finish)], usage=usage_json(u))


def _envelope(rid: str, obj: str, created: int, model: str, choices: list[dict], **extra) -> dict:
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": choices, **extra}


class SseEvents:
    """One stream's SSE events, each `data: <json.dumps of the chunk>`. A middle chunk (most of
    them) is its text set between the envelope and choice encoded once per stream: the same bytes
    for a small part of the CPU. The first, the last and usage are encoded whole."""

    def __init__(self, fmt: _Format, rid: str, created: int, model: str):
        self.fmt, self.rid, self.created, self.model = fmt, rid, created, model
        envelope = json.dumps(_envelope(rid, fmt.chunk_object, created, model, []))
        before, after = fmt.text_template
        self.before = f"data: {envelope.removesuffix(']}')}{before}"  # up to the choice's text
        self.after = f"{after}]}}\n\n"

    def chunk(self, c: Chunk, first: bool) -> str:
        if first or c.finish_reason:
            return _event(self.fmt.chunk(self.rid, self.created, self.model, c, first))
        return f"{self.before}{json.dumps(c.text)}{self.after}"

    def usage(self, u: Usage) -> str:
        return _event(self.fmt.usage_chunk(self.rid, self.created, self.model, u))


def _event(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"


class ChatFormat(_Format):
    id_prefix = "chatcmpl-"
    chunk_object = "chat.completion.chunk"
    whole_object = "chat.completion"

    def chunk_choice(self, c: Chunk, first: bool) -> dict:
        delta: dict = {"role": "assistant", "content": c.text} if first else {"content": c.text}
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": c.finish_reason}

    def whole_choice(self, text: str, finish: str) -> dict:
        message = {"role": "assistant", "content": text}
        return {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}


class CompletionFormat(_Format):
    id_prefix = "cmpl-"
    chunk_object = whole_object = "text_completion"

    def chunk_choice(self, c: Chunk, first: bool) -> dict:
        return {"index": 0, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason}

    def whole_choice(self, text: str, finish: str) -> dict:
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}


CHAT, COMPLETION = ChatFormat(), CompletionFormat()  # one each: their text templates are made once
