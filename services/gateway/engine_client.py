"""Streams a request from a worker's Triton (KServe v2 gRPC, decoupled model) with
`tritonclient.grpc.aio`. Leaving the iteration before the final response cancels the gRPC stream,
which Triton turns into `request.is_cancelled()` in the model, which aborts the request in the
engine."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor

from kvmesh.errors import KvmeshError, Unavailable
from kvmesh.v1 import worker_pb2


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
    def __init__(self) -> None:
        self._clients: dict[str, triton_aio.InferenceServerClient] = {}

    def _client(self, address: str) -> triton_aio.InferenceServerClient:
        client = self._clients.get(address)
        if client is None:
            client = self._clients[address] = triton_aio.InferenceServerClient(address)
        return client

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
        request = {
            "model_name": worker.triton_model,
            "inputs": inputs,
            "request_id": request_id,
            "parameters": {**trace_headers, "response_interval_ms": response_interval_ms}
            if response_interval_ms
            else trace_headers or None,
        }

        async def one_request():
            yield request

        responses = self._client(worker.triton_grpc_address).stream_infer(one_request(), headers=trace_headers)
        answered = False
        try:
            async for result, error in responses:
                if error is not None:
                    raise stream_error(worker, error.message())
                chunk = _chunk(result.get_response())
                answered = chunk.finish_reason is not None
                yield chunk
                if answered:
                    return
            raise EngineError(f"worker {worker.id}: the stream ended without a final response")
        except InferenceServerException as e:
            raise Unavailable(f"worker {worker.id} at {worker.triton_grpc_address}: {e.message()}") from None
        except grpc.aio.AioRpcError as e:
            raise Unavailable(f"worker {worker.id} at {worker.triton_grpc_address}: {e.details()}") from None
        finally:
            if not answered or not await _ended(responses):
                responses.cancel()

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()


async def _ended(responses, timeout_s: float = 5.0) -> bool:
    """Lets an answered request's stream end by itself (Triton closes it right after the final
    response). Cancelling it there instead can leave Triton 2.51 holding the model for good: its
    unload (a role change) and Triton's exit then never finish (tests/integration/test_model_unload.py)."""
    try:
        async with asyncio.timeout(timeout_s):
            async for _ in responses:
                pass
        return True
    except (TimeoutError, grpc.aio.AioRpcError):
        return False


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
