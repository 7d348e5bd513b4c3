"""gRPC kvmesh.v1 Inference and Models: proto ↔ domain only."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable

from opentelemetry import trace

from kvmesh import auth, telemetry
from kvmesh.errors import InvalidArgument, KvmeshError
from kvmesh.v1 import inference_pb2, inference_pb2_grpc, models_pb2, models_pb2_grpc
from services.gateway import metrics, prompt
from services.gateway.front_door import FrontDoor
from services.gateway.generation import Chunk, new_request_id
from services.gateway.limits import InputLimits
from services.gateway.request_log import RequestLine
from services.gateway.sampling import Sampling, engine_sampling
from services.gateway.served import ServedModel, ServedModels
from services.gateway.slow_clients import DEFAULT_WRITE_TIMEOUT_S, SlowClient, taken_in_time
from services.gateway.tokenization import encode_sized

CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
FINISH = {
    "stop": inference_pb2.FINISH_REASON_STOP,
    "length": inference_pb2.FINISH_REASON_LENGTH,
    "abort": inference_pb2.FINISH_REASON_ABORT,
}


def _unwrap(message, name: str):
    return getattr(message, name).value if message.HasField(name) else None


def sampling_from_proto(p: inference_pb2.SamplingParams) -> Sampling:
    wrapped = ("max_tokens", "temperature", "top_p", "top_k", "seed", "presence_penalty", "frequency_penalty")
    return Sampling(
        **{name: _unwrap(p, name) for name in wrapped},
        stop=list(p.stop),
        stop_token_ids=list(p.stop_token_ids),
        ignore_eos=p.ignore_eos,
    )


def _usage(chunk: Chunk) -> inference_pb2.Usage | None:
    if chunk.usage is None:
        return None
    u = chunk.usage
    return inference_pb2.Usage(
        prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens, cached_tokens=u.cached_tokens
    )


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    def __init__(
        self, served: ServedModels, front: FrontDoor, default_max_tokens: int, limits: InputLimits,
        write_timeout_s: float = DEFAULT_WRITE_TIMEOUT_S,
    ):  # fmt: skip
        """`write_timeout_s`: the longest a response message waits for its client to read (slow_clients.py)."""
        self.served = served
        self.front = front
        self.default_max_tokens = default_max_tokens
        self.limits = limits
        self.write_timeout_s = write_timeout_s

    async def _run(
        self, request, context, request_id: str, chars: int, prompt_ids: Callable[[ServedModel], list[int]],
        messages: int = 0,
    ):  # fmt: skip
        """Validate (the limits first, then the prompt of `chars` characters is tokenized), pass the
        front door, then stream chunks (the rate-limit and queue headers and the trace id go out as
        the call's metadata with the first), counting the call's outcome; a KvmeshError goes on to
        the server's interceptor, which ends the call with its status (the trace id in its trailing
        metadata). A client that reads nothing for the write timeout is cut off (counted then)."""
        root = trace.get_current_span()  # the server interceptor's, under the caller's trace if any
        root.set_attribute("kvmesh.request_id", request_id)
        line: RequestLine | None = None
        try:
            self.limits.check_messages(messages)
            model = self.served.get(request.model)
            auth.permit_model(auth.CALLER.get(), model.name)
            sampling = sampling_from_proto(request.sampling)
            self.limits.check_sampling(sampling)
            self.limits.check_prompt_chars(chars, "prompt")
            ids = await encode_sized(chars, lambda: prompt_ids(model))
            limit = self.served.max_model_len(model.name)
            engine = engine_sampling(sampling, len(ids), limit, self.default_max_tokens, model.defaults)
            # The client's deadline, if it set one, bounds the router's and the engines' calls too.
            caller = auth.CALLER.get()
            admitted = self.front.enter(caller, model, ids, engine, request_id, timeout_s=context.time_remaining())
            line = RequestLine("grpc", request_id, model.name, root, request.request_id, caller.name if caller else "")
            first = True
            async for chunk in taken_in_time(admitted.chunks, self.write_timeout_s, "grpc", request_id):
                line.saw(chunk)
                if first:
                    headers = {**admitted.headers(), **telemetry.response_headers(root)}
                    await context.send_initial_metadata(tuple(headers.items()))
                    first = False
                yield chunk
            metrics.REQUESTS.labels("grpc", "OK").inc()
            _end(line, "OK")
        except SlowClient:
            _end(line, "slow_client")
            raise
        except KvmeshError as e:
            metrics.REQUESTS.labels("grpc", e.grpc_code.name).inc()
            e.headers.update(telemetry.response_headers(root))
            _end(line, e.grpc_code.name)
            raise
        finally:
            _end(line, "CANCELLED")  # the client left; after an outcome above, nothing

    async def Generate(self, request, context) -> AsyncIterator[inference_pb2.GenerateResponse]:
        run_id, request_id = _request_ids(request.request_id)
        chars = len(request.text) if request.WhichOneof("prompt") == "text" else 0
        prompt_ids = lambda model: _generate_prompt(model, request)  # noqa: E731
        async for chunk in self._run(request, context, run_id, chars, prompt_ids):
            yield inference_pb2.GenerateResponse(
                request_id=request_id,
                token_ids=chunk.token_ids,
                text=chunk.text,
                finish_reason=FINISH.get(chunk.finish_reason or "", 0),
                usage=_usage(chunk),
                worker_id=chunk.worker_id,
            )

    async def Chat(self, request, context) -> AsyncIterator[inference_pb2.ChatResponse]:
        run_id, request_id = _request_ids(request.request_id)
        chat = [(m.role, m.content) for m in request.messages]
        chars = sum(len(content) for _, content in chat)
        first = True
        prompt_ids = lambda model: prompt.chat_ids(model.tokenizer, chat)  # noqa: E731
        async for chunk in self._run(request, context, run_id, chars, prompt_ids, len(chat)):
            yield inference_pb2.ChatResponse(
                request_id=request_id,
                role="assistant" if first else "",
                token_ids=chunk.token_ids,
                text=chunk.text,
                finish_reason=FINISH.get(chunk.finish_reason or "", 0),
                usage=_usage(chunk),
                worker_id=chunk.worker_id,
            )
            first = False


def _end(line: RequestLine | None, status: str) -> None:
    if line is not None:  # None: refused before it was admitted
        line.end(status)


def _request_ids(given: str) -> tuple[str, str]:
    """(the id the mesh runs the request under, the id its answers carry). The mesh names every
    request itself, so two clients that chose the same id never meet (in quotas, the router, the
    engines); a client's id is a label in front of it, in every log line, and is echoed back."""
    if not given:
        request_id = new_request_id()
        return request_id, request_id
    if not CLIENT_REQUEST_ID.fullmatch(given):
        raise InvalidArgument("request_id: 1-64 of A-Z a-z 0-9 . _ : - (or none)", param="request_id")
    return f"{given}.{new_request_id()}", given


def _generate_prompt(model: ServedModel, request: inference_pb2.GenerateRequest) -> list[int]:
    which = request.WhichOneof("prompt")
    if which == "text":
        return model.tokenizer.encode(request.text)
    if which == "token_ids":
        return prompt.token_ids(model.tokenizer, request.token_ids.ids, "token_ids")
    raise InvalidArgument("prompt: set text or token_ids", param="prompt")


class ModelsServicer(models_pb2_grpc.ModelsServicer):
    def __init__(self, served: ServedModels):
        self.served = served

    async def List(self, request, context):
        caller = auth.CALLER.get()
        out = []
        for name, records in self.served.live().items():
            if not records or (caller is not None and not caller.may_use(name)):
                continue
            out.append(
                models_pb2.ModelInfo(
                    id=name,
                    max_model_len=min(r.max_model_len for r in records),
                    kv_block_size=records[0].kv_block_size,
                    workers=len(records),
                )
            )
        return models_pb2.ModelsListResponse(models=out)
