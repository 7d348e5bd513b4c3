"""Streams a request from a worker's Triton (KServe v2 gRPC, decoupled model) with
`tritonclient.grpc.aio`: on the worker model's mux when there is one, else on a stream of its own.
Leaving the iteration before the final response cancels the request (its own gRPC stream, which
Triton turns into `request.is_cancelled()` in the model, or a cancel through the mux), which
aborts it in the engine."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor

from kvmesh.errors import KvmeshError, Unavailable
from kvmesh.v1 import worker_pb2
from services.gateway.engine_mux import MUX, EngineMux

log = logging.getLogger(__name__)


@dataclass
class EngineChunk:
    token_ids: list[int]
    finish_reason: str | None
    prompt_tokens: int
    cached_tokens: int
    # A prefill instance's last response: what the decode instance needs.
    kv_transfer_params: dict | None = None


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


class TritonPool:
    """Triton clients by address, and a mux (engines/mux.py) per worker model, opened once two of
    this gateway's requests run there at a time: the engine then sends each step's tokens of all of
    them as one response."""

    def __init__(self, mux: bool = True, mux_open_timeout_s: float = 5.0) -> None:
        self._clients: dict[str, triton_aio.InferenceServerClient] = {}
        self.use_mux = mux
        self.mux_open_timeout_s = mux_open_timeout_s
        self._muxes: dict[tuple[str, str], EngineMux] = {}
        self._opening: dict[tuple[str, str], asyncio.Future] = {}
        self._mux_retry_at: dict[tuple[str, str], float] = {}
        self._retired: set[EngineMux] = set()
        self._in_flight: dict[tuple[str, str], int] = {}

    def _client(self, address: str) -> triton_aio.InferenceServerClient:
        client = self._clients.get(address)
        if client is None:
            client = self._clients[address] = triton_aio.InferenceServerClient(address)
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
            self._muxes.pop(key, None)
            self._mux_retry_at[key] = time.monotonic() + MUX_RETRY_S
            return None
        finally:
            del self._opening[key]

    async def stream(
        self,
        worker: worker_pb2.WorkerRecord,
        request_id: str,
        prompt_ids: list[int],
        sampling: dict,
        trace_headers: dict[str, str],
        kv_transfer_params: dict | None = None,
        response_interval_ms: float = 0.0,
    ) -> AsyncIterator[EngineChunk]:
        """`kv_transfer_params`: for a decode instance, what its prefill instance returned ({}:
        prefill there). `response_interval_ms`: after the first token, the engine sends at most
        one response this often (0: one per token)."""
        ids = triton_aio.InferInput("input_ids", [len(prompt_ids)], "INT32")
        ids.set_data_from_numpy(np.asarray(prompt_ids, dtype=np.int32))
        inputs = [ids, _json_input("sampling_params", sampling)]
        if kv_transfer_params is not None:
            inputs.append(_json_input("kv_transfer_params", kv_transfer_params))
        parameters: dict = dict(trace_headers)
        if response_interval_ms:
            parameters["response_interval_ms"] = response_interval_ms
        # Deltas come from the mux's reader or from the request's own stream into one queue.
        queue: asyncio.Queue = asyncio.Queue()
        key = (worker.triton_grpc_address, worker.triton_model)
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        # A mux is opened once two requests run on a worker model at a time; one open is used by
        # a request alone too (no stream of its own to open).
        try:
            mux = await self._mux(worker, may_open=self._in_flight[key] > 1)
        except BaseException:  # cancelled while the mux opened
            self._in_flight[key] -= 1
            raise
        if mux is not None:
            parameters[MUX] = mux.id
        request = {
            "model_name": worker.triton_model,
            "inputs": inputs,
            "request_id": request_id,
            "parameters": parameters or None,
        }
        if mux is not None:
            mux.submit(request_id, request, queue)
        else:

            async def one_request():
                yield request

            responses = self._client(worker.triton_grpc_address).stream_infer(one_request(), headers=trace_headers)
            own = asyncio.create_task(_pump(worker, responses, queue))
        answered = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                if isinstance(item, str):  # the engine's error, by the mux
                    raise stream_error(worker, item)
                chunk = item if isinstance(item, EngineChunk) else _muxed_chunk(item)
                answered = chunk.finish_reason is not None
                yield chunk
                if answered:
                    return
        finally:
            self._in_flight[key] -= 1
            if mux is not None:
                mux.leave(request_id)
                if not answered and mux.open:
                    mux.cancel(request_id)  # the model aborts it
            elif not answered or not await _ended(own):
                responses.cancel()
                own.cancel()

    async def close(self) -> None:
        for mux in [*self._muxes.values(), *self._retired]:
            await mux.close()
        for client in self._clients.values():
            await client.close()


# After a failed try to open a mux to a worker model, its requests stream on their own this long.
MUX_RETRY_S = 5.0


async def _pump(worker: worker_pb2.WorkerRecord, responses, queue: asyncio.Queue) -> None:
    """A request's own stream into its queue, read to its end: Triton closes it right after the
    final response. Cancelling it there instead can leave Triton 2.51 holding the model for good:
    its unload (a role change) and Triton's exit then never finish (tests/integration/test_model_unload.py)."""
    ended = False
    try:
        async for result, error in responses:
            if error is not None:
                queue.put_nowait(stream_error(worker, error.message()))
                return
            chunk = _chunk(result.get_response())
            ended = chunk.finish_reason is not None
            queue.put_nowait(chunk)
        if not ended:
            queue.put_nowait(EngineError(f"worker {worker.id}: the stream ended without a final response"))
    except InferenceServerException as e:
        queue.put_nowait(Unavailable(f"worker {worker.id} at {worker.triton_grpc_address}: {e.message()}"))
    except grpc.aio.AioRpcError as e:
        queue.put_nowait(Unavailable(f"worker {worker.id} at {worker.triton_grpc_address}: {e.details()}"))


async def _ended(own: asyncio.Task, timeout_s: float = 5.0) -> bool:
    """Waits for an answered request's own stream to end by itself."""
    try:
        await asyncio.wait_for(asyncio.shield(own), timeout_s)
        return True
    except TimeoutError:
        return False


def _muxed_chunk(delta: list) -> EngineChunk:
    token_ids, finish_reason, prompt_tokens, cached_tokens, kv_transfer_params = delta
    return EngineChunk(token_ids, finish_reason, prompt_tokens, cached_tokens, kv_transfer_params)


def _json_input(name: str, value: dict) -> triton_aio.InferInput:
    tensor = triton_aio.InferInput(name, [1], "BYTES")
    tensor.set_data_from_numpy(np.asarray([json.dumps(value).encode()], dtype=np.object_))
    return tensor


def _chunk(response) -> EngineChunk:
    """Reads the raw output tensors straight from the protobuf: this runs once per streamed
    response, and InferResult's per-name lookups and numpy copies cost more than the decoding.
    Only the final response carries the finish reason and the counts."""
    raw = {output.name: content for output, content in zip(response.outputs, response.raw_output_contents, strict=True)}
    token_ids = np.frombuffer(raw["output_ids"], dtype="<i4").tolist()
    if "finish_reason" not in raw:
        return EngineChunk(token_ids, None, 0, 0)
    return EngineChunk(
        token_ids=token_ids,
        finish_reason=deserialize_bytes_tensor(raw["finish_reason"])[0].decode() or None,
        prompt_tokens=int(np.frombuffer(raw["prompt_tokens"], dtype="<i4")[0]),
        cached_tokens=int(np.frombuffer(raw["cached_tokens"], dtype="<i4")[0]),
        kv_transfer_params=json.loads(deserialize_bytes_tensor(raw["kv_transfer_params"])[0])
        if "kv_transfer_params" in raw
        else None,
    )
