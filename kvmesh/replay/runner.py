"""Open-loop replay: each request is sent at its (scaled) arrival time over the gateway's gRPC
`Inference.Generate` with its token ids, and timed from the stream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from google.protobuf import wrappers_pb2

from kvmesh.replay.traces import TraceRequest
from kvmesh.tls import MutualTls
from kvmesh.v1 import inference_pb2, inference_pb2_grpc


@dataclass
class Outcome:
    index: int
    sent_s: float  # since the replay started
    prompt_tokens: int
    cached_tokens: int = 0
    output_tokens: int = 0
    ttft_s: float | None = None
    e2e_s: float | None = None
    # Mean inter-token latency of this request (None with fewer than two tokens).
    itl_s: float | None = None
    worker_id: str = ""
    error: str = ""


@dataclass
class ReplayOptions:
    time_scale: float = 1.0  # arrival times × this (0.1: ten times faster)
    max_output_tokens: int | None = None
    max_in_flight: int = 256  # a bound for this machine; arrivals wait beyond it
    timeout_s: float = 600.0


async def replay(
    target: str,
    model: str,
    requests: list[TraceRequest],
    options: ReplayOptions,
    progress: Callable[[Outcome], None] | None = None,
    tls: MutualTls | None = None,
) -> tuple[list[Outcome], float]:
    """Returns the outcomes (trace order) and the wall time. `tls`: the client certificate for a
    gateway under mutual TLS."""
    slots = asyncio.Semaphore(options.max_in_flight)
    unbounded = [("grpc.max_receive_message_length", -1)]
    channel = (
        grpc.aio.secure_channel(target, tls.channel_credentials(), options=unbounded)
        if tls
        else grpc.aio.insecure_channel(target, options=unbounded)
    )
    async with channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        start = time.perf_counter()
        base = requests[0].arrival_s

        async def one(request: TraceRequest) -> Outcome:
            delay = (request.arrival_s - base) * options.time_scale - (time.perf_counter() - start)
            if delay > 0:
                await asyncio.sleep(delay)
            async with slots:
                outcome = await _send(stub, model, request, options, start)
            if progress:
                progress(outcome)
            return outcome

        outcomes = await asyncio.gather(*(one(r) for r in requests))
        return list(outcomes), time.perf_counter() - start


async def _send(stub, model: str, request: TraceRequest, options: ReplayOptions, start: float) -> Outcome:
    prompt = request.prompt()
    max_tokens = max(request.output_length, 1)
    if options.max_output_tokens:
        max_tokens = min(max_tokens, options.max_output_tokens)
    message = inference_pb2.GenerateRequest(
        model=model,
        token_ids=inference_pb2.TokenIds(ids=prompt),
        sampling=inference_pb2.SamplingParams(
            max_tokens=wrappers_pb2.UInt32Value(value=max_tokens),
            ignore_eos=True,
        ),
    )
    sent = time.perf_counter()
    outcome = Outcome(request.index, sent - start, len(prompt))
    first = last = None
    try:
        async for reply in stub.Generate(message, timeout=options.timeout_s):
            now = time.perf_counter()
            if reply.token_ids and first is None:
                first = now
            if reply.token_ids:
                last = now
            outcome.output_tokens += len(reply.token_ids)
            if reply.worker_id:
                outcome.worker_id = reply.worker_id
            if reply.HasField("usage"):
                outcome.cached_tokens = reply.usage.cached_tokens
                outcome.prompt_tokens = reply.usage.prompt_tokens
    except grpc.aio.AioRpcError as e:
        outcome.error = f"{e.code().name}: {e.details()}"
        return outcome
    end = time.perf_counter()
    outcome.e2e_s = end - sent
    if first is not None:
        outcome.ttft_s = first - sent
        if outcome.output_tokens > 1:
            outcome.itl_s = (last - first) / (outcome.output_tokens - 1)
    return outcome
