"""Streams a request from a worker's Triton (KServe v2 gRPC, decoupled model) with
`tritonclient.grpc.aio`: on the worker model's mux when there is one, else on a stream of its own.
Leaving the iteration before the final response cancels the request (its own gRPC stream, which
Triton turns into `request.is_cancelled()` in the model, or a cancel through the mux), which
aborts it in the engine.

A request fails, to move to another worker (Unavailable), when its worker leaves the registry or is
registered unresponsive, when its connection stops answering keepalive pings (grpc_server.KEEPALIVE),
or when its worker has sent none of this gateway's requests anything for `stall_timeout_s` while it
waited (a stuck engine behind a Triton that still answers); and it fails with DeadlineExceeded at
its deadline."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio
from opentelemetry import trace
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor

from kvmesh import engine_wire as wire
from kvmesh import grpc_server, telemetry
from kvmesh.engine_wire import EngineDelta
from kvmesh.errors import DeadlineExceeded, KvmeshError, Unavailable
from kvmesh.registry import LiveWorker
from kvmesh.sampling import SamplingParams
from kvmesh.tls import MutualTls
from kvmesh.v1 import worker_pb2
from services.gateway import metrics
from services.gateway.engine_mux import EngineMux, encoded_request, triton_request

log = logging.getLogger(__name__)
TRACER = trace.get_tracer("kvmesh.gateway")


class EngineError(KvmeshError):
    """The engine failed the request."""


# Triton's answer for a model it does not have loaded: the worker changed roles (unloaded this
# model) after the request was routed to it, e.g. while the request's prefill ran elsewhere.
UNKNOWN_MODEL = "Request for unknown model"


def stream_error(worker: worker_pb2.WorkerRecord, message: str) -> KvmeshError:
    """An error Triton sent on the stream: Unavailable (try another worker) if this worker no
    longer runs the model, else the engine's failure."""
    if UNKNOWN_MODEL in message:
        return Unavailable(f"worker {worker.id} no longer runs {worker.triton_model}: {message}")
    return EngineError(f"worker {worker.id}: {message}")


class Inbox:
    """One request's deltas, from its own stream or its mux, in the order they came, then the
    error that ended it if one did: what the producers read is converted as they put it here.
    `heard` (worker id → when it last sent one of its requests anything) is kept up to date."""

    def __init__(self, worker: worker_pb2.WorkerRecord, heard: dict[str, float] | None = None) -> None:
        self.worker = worker
        self.started = time.monotonic()
        self._heard = {} if heard is None else heard
        self._deltas: asyncio.Queue[EngineDelta | None] = asyncio.Queue()  # None: ended by _error
        self._error: KvmeshError | None = None

    def put(self, delta: EngineDelta) -> None:
        self._heard[self.worker.id] = time.monotonic()
        self._deltas.put_nowait(delta)

    def fail(self, error: KvmeshError) -> bool:
        """True if `error` ends the request: the first does, later ones are not read."""
        if self._error is not None:
            return False
        self._error = error
        self._deltas.put_nowait(None)
        return True

    def engine_failed(self, message: str) -> None:
        """The error message Triton or the engine sent for this request."""
        self.fail(stream_error(self.worker, message))

    async def get(self) -> EngineDelta:
        delta = await self._deltas.get()
        if delta is None:
            assert self._error is not None
            raise self._error
        return delta


class TritonPool:
    """Triton clients by address, and a mux (docs/mux.md) per worker model, opened once two of
    this gateway's requests run there at a time: the engine then sends each step's tokens of all of
    them as one response."""

    def __init__(
        self, mux: bool = True, mux_open_timeout_s: float = 5.0, tls: MutualTls | None = None,
        stall_timeout_s: float = 30.0,
    ) -> None:  # fmt: skip
        self._clients: dict[str, triton_aio.InferenceServerClient] = {}
        self._creds = tls.channel_credentials() if tls else None  # the gateway's certificate, to Triton
        self.use_mux = mux
        self.mux_open_timeout_s = mux_open_timeout_s
        self._muxes: dict[tuple[str, str], EngineMux] = {}
        self._opening: dict[tuple[str, str], asyncio.Future] = {}
        self._mux_retry_at: dict[tuple[str, str], float] = {}
        self._retired: set[EngineMux] = set()
        self._in_flight: dict[tuple[str, str], int] = {}
        self._inboxes: dict[str, set[Inbox]] = {}  # by worker id: the requests running there
        self.stall_timeout_s = stall_timeout_s
        self._heard: dict[str, float] = {}  # by worker id: when it last sent a request of ours anything
        self._watchdog: asyncio.Task | None = None

    def _client(self, address: str) -> triton_aio.InferenceServerClient:
        client = self._clients.get(address)
        if client is None:
            client = self._clients[address] = triton_aio.InferenceServerClient(
                address, creds=self._creds, channel_args=CHANNEL_ARGS
            )
        return client

    async def _mux(self, worker: worker_pb2.WorkerRecord, may_open: bool = True) -> EngineMux | None:
        """The worker model's usable mux, opened if need be and `may_open`; None (stream on the
        request's own stream) if there is none to use, muxes are off, or the last try to open one
        failed less than MUX_RETRY_S ago."""
        key = (worker.triton_grpc_address, worker.triton_model)
        mux = self._muxes.get(key)
        if mux is not None and mux.usable():
            return mux
        if not may_open or not self.use_mux or time.monotonic() < self._mux_retry_at.get(key, 0.0):
            return None
        opening = self._opening.get(key)
        if opening is None:
            opening = self._opening[key] = asyncio.ensure_future(self._open(key))
        return await asyncio.shield(opening)

    async def _open(self, key: tuple[str, str]) -> EngineMux | None:
        address, model = key
        mux = EngineMux(self._client(address), model, address)
        try:
            await mux.start(self.mux_open_timeout_s)
            if (idle := self._muxes.get(key)) is not None:
                # The model ends it; kept until then, to be closed with the pool.
                self._retired = {m for m in self._retired if not m.finished()} | {idle}
            self._muxes[key] = mux
            return mux
        except (Unavailable, TimeoutError, InferenceServerException, grpc.aio.AioRpcError) as e:
            log.warning("no mux to %s on %s (requests stream on their own): %s", model, address, e)
            if (old := self._muxes.pop(key, None)) is not None and not old.finished():
                self._retired.add(old)  # rotated, requests still on it: closed with the pool
            self._mux_retry_at[key] = time.monotonic() + MUX_RETRY_S
            return None
        finally:
            del self._opening[key]

    def fail_workers_gone(self, live: Mapping[str, LiveWorker]) -> None:
        """Fails the requests on workers no longer in the registry, or registered unresponsive, so
        that they move to another: a worker leaves only once drained, or when its lease runs out
        (dead, or its host cut off, whose streams would otherwise wait out TCP's timeouts); it is
        unresponsive when its Triton does not answer (hung, stopped) though the worker lives."""
        for worker_id in list(self._inboxes):
            if worker_id not in live:
                why = "left the registry"
            elif live[worker_id].record.unresponsive:
                why = "is unresponsive (its Triton does not answer)"
            else:
                continue
            for inbox in self._inboxes.pop(worker_id):
                if inbox.fail(Unavailable(f"worker {worker_id} {why}")) and worker_id in live:
                    metrics.HUNG_WORKER_FAILURES.labels("unresponsive").inc()

    def fail_stalled(self, now: float) -> None:
        """Fails the requests that waited `stall_timeout_s` while their worker sent none of this
        gateway's requests anything: its engine is stuck though its Triton may answer. A worker
        busy with others' requests is not stalled; nor is one busy only with other gateways'
        requests for that long, which this gateway cannot tell from stuck (hence a generous default)."""
        for worker_id, inboxes in list(self._inboxes.items()):
            heard = self._heard.get(worker_id, 0.0)
            for inbox in [i for i in inboxes if now - max(i.started, heard) >= self.stall_timeout_s]:
                if inbox.fail(Unavailable(f"worker {worker_id}: nothing from its engine in {self.stall_timeout_s:g}s")):
                    metrics.HUNG_WORKER_FAILURES.labels("stalled").inc()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.stall_timeout_s / 4))
            self.fail_stalled(time.monotonic())

    async def stream(
        self,
        worker: worker_pb2.WorkerRecord,
        request_id: str,
        prompt_ids: list[int],
        sampling: SamplingParams,
        trace_headers: dict[str, str],
        kv_transfer_params: dict | None = None,
        response_interval_ms: float = 0.0,
        deadline: float | None = None,
    ) -> AsyncIterator[EngineDelta]:
        """`kv_transfer_params`: for a decode instance, what its prefill instance returned ({}:
        prefill there). `response_interval_ms`: after the first token, the engine sends at most
        one response this often (0: one per token). `deadline` (time.monotonic()): the request
        fails with DeadlineExceeded then, and is cancelled like one whose client left: Triton 2.51
        is not given it as a gRPC deadline, whose expiry could cancel a stream just after its
        final response (see _pump)."""
        if self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch())
        # One span for the whole call, its counts set at the end: never one per response.
        span = telemetry.start_span(
            TRACER, "kvmesh.infer", telemetry.extract(trace_headers), trace.SpanKind.CLIENT, _infer_attributes(
                worker, request_id, len(prompt_ids), kv_transfer_params
            ),
        )  # fmt: skip
        with telemetry.ending(span):
            if span.is_recording():  # the engine's spans go under it; else the caller's context goes on
                trace_headers = telemetry.carrier(trace.set_span_in_context(span))
            parameters: dict = dict(trace_headers)
            if response_interval_ms:
                parameters[wire.RESPONSE_INTERVAL_MS] = response_interval_ms
            request = encoded_request(request_id, prompt_ids, sampling, kv_transfer_params, parameters)
            # Deltas come from the mux's reader or from the request's own stream.
            inbox = Inbox(worker, self._heard)
            self._inboxes.setdefault(worker.id, set()).add(inbox)
            expiry = None
            if deadline is not None:
                passed = DeadlineExceeded(f"worker {worker.id}: the deadline passed")
                expiry = asyncio.get_running_loop().call_later(deadline - time.monotonic(), inbox.fail, passed)
            key = (worker.triton_grpc_address, worker.triton_model)
            self._in_flight[key] = self._in_flight.get(key, 0) + 1
            # A mux is opened once two requests run on a worker model at a time; one open is used by
            # a request alone too (no stream of its own to open).
            try:
                mux = await self._mux(worker, may_open=self._in_flight[key] > 1)
            except BaseException:  # cancelled while the mux opened
                self._in_flight[key] -= 1
                self._forget(inbox, expiry)
                raise
            span.set_attribute("kvmesh.mux", mux is not None)
            if mux is not None:
                mux.submit(request, inbox)
            else:

                async def one_request():
                    yield triton_request(worker.triton_model, request, {})

                responses = self._client(worker.triton_grpc_address).stream_infer(one_request(), headers=trace_headers)
                own = asyncio.create_task(_pump(worker, responses, inbox))
            answered, received, tokens = False, 0, 0
            try:
                while True:
                    delta = await inbox.get()
                    answered = delta.finish_reason is not None
                    received, tokens = received + 1, tokens + len(delta.token_ids)
                    if answered:
                        span.set_attributes(
                            {"kvmesh.finish_reason": delta.finish_reason, "kvmesh.cached_tokens": delta.cached_tokens}
                        )
                    yield delta
                    if answered:
                        return
            finally:
                span.set_attributes({"kvmesh.responses": received, "kvmesh.output_tokens": tokens})
                self._in_flight[key] -= 1
                self._forget(inbox, expiry)
                if mux is not None:
                    mux.leave(request_id)
                    if not answered and mux.open:
                        mux.cancel(request_id)  # the model aborts it
                elif not answered or not await _ended(own):
                    responses.cancel()
                    own.cancel()

    def _forget(self, inbox: Inbox, expiry: asyncio.TimerHandle | None) -> None:
        if expiry is not None:
            expiry.cancel()
        running = self._inboxes.get(inbox.worker.id)
        if running is not None:
            running.discard(inbox)
            if not running:
                del self._inboxes[inbox.worker.id]
                self._heard.pop(inbox.worker.id, None)

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        for mux in [*self._muxes.values(), *self._retired]:
            await mux.close()
        for client in self._clients.values():
            await client.close()


# After a failed try to open a mux to a worker model, its requests stream on their own this long.
MUX_RETRY_S = 5.0
# tritonclient's message limits, and keepalive: a Triton that stops answering pings (hung,
# stopped, cut off) has its connection closed within seconds and its streams fail, where TCP would
# wait many minutes (the workers' Triton accepts the pings: worker/triton_server.py).
CHANNEL_ARGS = [
    ("grpc.max_send_message_length", triton_aio.MAX_GRPC_MESSAGE_SIZE),
    ("grpc.max_receive_message_length", triton_aio.MAX_GRPC_MESSAGE_SIZE),
    *grpc_server.KEEPALIVE,
]


async def _pump(worker: worker_pb2.WorkerRecord, responses, inbox: Inbox) -> None:
    """A request's own stream into its inbox, read to its end: Triton closes it right after the
    final response. Cancelling it there instead can leave Triton 2.51 holding the model for good:
    its unload (a role change) and Triton's exit then never finish (tests/integration/test_model_unload.py)."""
    ended = False
    try:
        async for result, error in responses:
            if error is not None:
                inbox.engine_failed(error.message())
                return
            delta = _delta(result.get_response())
            ended = delta.finish_reason is not None
            inbox.put(delta)
        if not ended:
            inbox.fail(EngineError(f"worker {worker.id}: the stream ended without a final response"))
    except InferenceServerException as e:
        inbox.fail(Unavailable(f"worker {worker.id} at {worker.triton_grpc_address}: {e.message()}"))
    except grpc.aio.AioRpcError as e:
        inbox.fail(Unavailable(f"worker {worker.id} at {worker.triton_grpc_address}: {e.details()}"))


async def _ended(own: asyncio.Task, timeout_s: float = 5.0) -> bool:
    """Waits for an answered request's own stream to end by itself."""
    try:
        await asyncio.wait_for(asyncio.shield(own), timeout_s)
        return True
    except TimeoutError:
        return False


def _infer_attributes(
    worker: worker_pb2.WorkerRecord, request_id: str, prompt_tokens: int, kv_transfer_params: dict | None
) -> dict:
    """What a `kvmesh.infer` span says of the call: its worker and phase (prefill: a prefill
    instance's; decode: a decode instance's given a prefill's KV; whole: the rest)."""
    if worker.role == worker_pb2.ROLE_PREFILL:
        phase = "prefill"
    else:
        phase = "decode" if kv_transfer_params else "whole"
    return {
        "kvmesh.request_id": request_id, "kvmesh.worker": worker.id, "kvmesh.triton_model": worker.triton_model,
        "kvmesh.phase": phase, "kvmesh.prompt_tokens": prompt_tokens,
    }  # fmt: skip


def _delta(response) -> EngineDelta:
    """Reads the raw output tensors straight from the protobuf: this runs once per streamed
    response, and InferResult's per-name lookups and numpy copies cost more than the decoding.
    Only the final response carries the finish reason and the counts."""
    raw = {output.name: content for output, content in zip(response.outputs, response.raw_output_contents, strict=True)}
    token_ids = np.frombuffer(raw[wire.OUTPUT_IDS], dtype="<i4").tolist()
    if wire.FINISH_REASON not in raw:
        return EngineDelta(token_ids, None, 0, 0)
    return EngineDelta(
        token_ids=token_ids,
        finish_reason=deserialize_bytes_tensor(raw[wire.FINISH_REASON])[0].decode() or None,
        prompt_tokens=int(np.frombuffer(raw[wire.PROMPT_TOKENS], dtype="<i4")[0]),
        cached_tokens=int(np.frombuffer(raw[wire.CACHED_TOKENS], dtype="<i4")[0]),
        kv_transfer_params=json.loads(deserialize_bytes_tensor(raw[wire.KV_TRANSFER_PARAMS])[0])
        if wire.KV_TRANSFER_PARAMS in raw
        else None,
    )
