"""The gateway's end of a worker model's mux (engines/mux.py): one long-lived Triton stream on
which the model sends every step's new tokens of all the gateway's requests on it as one response,
dispatched here to each request's queue."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor

from kvmesh.errors import Unavailable
from services.gateway import metrics

log = logging.getLogger(__name__)

# The names engines/mux.py defines (the gateway does not import engine code).
MUX_OPEN = "mux_open"
MUX = "mux"
MUX_CANCEL = "mux_cancel"
OUTPUT = "mux_deltas"


def batch_of(response) -> list | None:
    """A response's mux batch (a list of [request id, token ids, finish reason, prompt tokens,
    cached tokens, kv_transfer_params]; None: the mux ended), or [] when it carries none."""
    for output, content in zip(response.outputs, response.raw_output_contents, strict=True):
        if output.name == OUTPUT:
            return json.loads(deserialize_bytes_tensor(content)[0])
    return []


def has_batch(response) -> bool:
    return any(output.name == OUTPUT for output in response.outputs)


class EngineMux:
    """One model on one worker. `members` maps a request id to the queue its deltas go to; the
    items are ([token ids, finish reason, prompt tokens, cached tokens, kv_transfer_params]) lists,
    or an exception when the mux broke under the request."""

    def __init__(self, client: triton_aio.InferenceServerClient, model: str, address: str):
        self.id = uuid.uuid4().hex
        self.model = model
        self.address = address
        self.members: dict[str, asyncio.Queue] = {}
        self.open = False
        self._client = client
        self._ended = asyncio.Event()
        self._cancels: set[asyncio.Task] = set()
        self._reader: asyncio.Task | None = None
        self._responses = None

    async def start(self, timeout_s: float) -> None:
        """Returns once the model has answered that the mux is open."""
        opening = {
            "model_name": self.model,
            "inputs": [_ignored_input()],
            "request_id": f"mux-{self.id}",
            "parameters": {MUX_OPEN: self.id},
        }

        async def requests():
            yield opening
            # One request a stream: Triton 2.51 aborts (gRPC's "!byte_buffer->Valid()") when the
            # responses of two requests in flight on one stream are written at once.
            await self._ended.wait()  # the stream stays open for the mux's life

        responses = self._client.stream_infer(requests())
        try:
            async with asyncio.timeout(timeout_s):
                result, error = await anext(responses)
        except BaseException:
            responses.cancel()
            raise
        if error is not None or batch_of(result.get_response()) != []:
            responses.cancel()
            raise Unavailable(f"{self.address}: {self.model} did not open a mux: {error.message() if error else 'no'}")
        self.open = True
        self._responses = responses
        self._reader = asyncio.create_task(self._read(responses))

    async def _read(self, responses) -> None:
        try:
            async for result, error in responses:
                if error is not None:
                    raise Unavailable(f"mux on {self.address}: {error.message()}")
                batch = batch_of(result.get_response())
                if batch is None:  # the model ended it (idle): requests sent since stream on their own
                    return
                metrics.MUX_BATCHES.inc()
                metrics.MUX_DELTAS.inc(len(batch))
                for rid, *delta in batch:
                    queue = self.members.get(rid)
                    if queue is not None:
                        queue.put_nowait(delta)
            self._fail(Unavailable(f"mux on {self.address}: the stream ended"))
        except Unavailable as e:
            self._fail(e)
        except (InferenceServerException, grpc.aio.AioRpcError) as e:
            self._fail(Unavailable(f"mux on {self.address}: {e}"))
        finally:
            self.open = False
            self._ended.set()

    def _fail(self, error: Unavailable) -> None:
        for queue in self.members.values():
            queue.put_nowait(error)
        if self.members:
            log.warning("%s; %d requests on it fail", error, len(self.members))

    def cancel(self, request_id: str) -> None:
        """Tells the model that a request on this mux lost its client (the model aborts it), on a
        stream of its own that ends with the model's answer."""
        if self.open:
            task = asyncio.create_task(self._cancel(request_id))
            self._cancels.add(task)
            task.add_done_callback(self._cancels.discard)

    async def _cancel(self, request_id: str) -> None:
        async def one_request():
            yield {
                "model_name": self.model,
                "inputs": [_ignored_input()],
                "request_id": f"cancel-{request_id}",
                "parameters": {MUX: self.id, MUX_CANCEL: request_id},
            }

        try:
            async for _, error in self._client.stream_infer(one_request()):  # read to its end
                if error is not None:
                    log.warning("cancel of %s on %s: %s", request_id, self.address, error.message())
        except (InferenceServerException, grpc.aio.AioRpcError) as e:
            log.warning("cancel of %s on %s: %s", request_id, self.address, e)

    async def close(self) -> None:
        was_open, self.open = self.open, False
        self._ended.set()
        if was_open and self._responses is not None:
            # Only a live mux: cancelling a stream just after its final response (the model ended
            # the mux) can leave Triton 2.51 holding the model (engine_client._pump).
            self._responses.cancel()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


def _ignored_input() -> triton_aio.InferInput:
    """Triton requires input_ids on every request; a mux's own requests (open, cancel) are not read."""
    ids = triton_aio.InferInput("input_ids", [1], "INT32")
    ids.set_data_from_numpy(np.zeros(1, dtype=np.int32))
    return ids
