"""The gateway's end of a worker model's mux (docs/mux.md): one long-lived Triton stream on which
the gateway sends its requests to that model (those submitted while the previous one was being
sent, as one Triton request) and the model sends every step's new tokens of all of them as one
response, dispatched here to each request's inbox."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import TYPE_CHECKING

import grpc
import msgspec
import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor

from kvmesh import engine_wire as wire
from kvmesh.errors import Unavailable
from kvmesh.sampling import SamplingParams
from services.gateway import metrics

if TYPE_CHECKING:
    from services.gateway.engine_client import Inbox

log = logging.getLogger(__name__)

# A request sent on a mux idle for half the time after which the model ends it reaches it open.
REUSE_IDLE_S = wire.MUX_IDLE_CLOSE_S / 2
# Triton 2.51 keeps ~2 KB of state per request sent on a stream until the stream ends (a request
# ended by a flags-only final response is never released before): a mux that has carried this many
# takes no more, and the model ends it once it idles, which bounds tritonserver's memory.
ROTATE_AFTER_REQUESTS = 2000


def batch_of(response) -> list[wire.MuxEntry] | None:
    """A response's mux batch (None: the mux ended), or [] when it carries none."""
    for output, content in zip(response.outputs, response.raw_output_contents, strict=True):
        if output.name == wire.MUX_DELTAS:
            return wire.decode_batch(deserialize_bytes_tensor(content)[0])
    return []


class EngineMux:
    """One model on one worker. `members` maps a request id to the inbox its deltas go to; a
    request's error in a batch, or the mux breaking under it, fails its inbox."""

    def __init__(self, client: triton_aio.InferenceServerClient, model: str, address: str):
        self.id = uuid.uuid4().hex
        self.model = model
        self.address = address
        self.members: dict[str, Inbox] = {}
        self.open = False
        self.idle_since = time.monotonic()
        self.requests_sent = 0
        self._client = client
        self._outgoing: asyncio.Queue[wire.MuxRequest | None] = asyncio.Queue()  # None: no more requests
        self._ended = False
        self._cancels: set[asyncio.Task] = set()
        self._reader: asyncio.Task | None = None
        self._responses = None

    async def start(self, timeout_s: float) -> None:
        """Returns once the model has answered that the mux is open."""
        opening = {
            "model_name": self.model,
            "inputs": [_ignored_input()],
            "request_id": f"mux-{self.id}",
            "parameters": {wire.MUX_OPEN: self.id},
        }

        async def requests():
            yield opening
            while (first := await self._outgoing.get()) is not None:
                # The requests submitted while the previous one was being sent go as one.
                waiting, ended = [first], False
                while not ended and not self._outgoing.empty():
                    if (request := self._outgoing.get_nowait()) is None:
                        ended = True
                    else:
                        waiting.append(request)
                waiting = [r for r in waiting if r.request_id in self.members]  # not those gone meanwhile
                if len(waiting) == 1:
                    yield triton_request(self.model, waiting[0], {wire.MUX: self.id})
                elif waiting:
                    yield self._batch_request(waiting)
                if ended:
                    return

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

    def usable(self) -> bool:
        """Open, not retired (ROTATE_AFTER_REQUESTS), and not idle so long that the model may end it
        before a request gets there."""
        if not self.open or self.requests_sent >= ROTATE_AFTER_REQUESTS:
            return False
        return bool(self.members) or time.monotonic() - self.idle_since < REUSE_IDLE_S

    def finished(self) -> bool:
        """Its stream has ended (or it never opened)."""
        return self._reader is None or self._reader.done()

    def submit(self, request: wire.MuxRequest, inbox: Inbox) -> None:
        if self._ended:  # while the caller waited for it to open
            inbox.fail(Unavailable(f"mux on {self.address}: ended before the request was sent"))
            return
        self.members[request.request_id] = inbox
        self.requests_sent += 1
        self._outgoing.put_nowait(request)

    def _batch_request(self, requests: list[wire.MuxRequest]) -> dict:
        """Several requests as one Triton request: the model ends it once all of them are done."""
        payload = triton_aio.InferInput(wire.MUX_REQUESTS, [1], "BYTES")
        payload.set_data_from_numpy(np.asarray([wire.encode_requests(requests)], dtype=np.object_))
        return {"model_name": self.model, "inputs": [_ignored_input(), payload], "parameters": {wire.MUX: self.id}}

    def leave(self, request_id: str) -> None:
        self.members.pop(request_id, None)
        if not self.members:
            self.idle_since = time.monotonic()

    async def _read(self, responses) -> None:
        """Dispatches batches until the model ends the mux or the stream fails, then reads the
        stream to its end: Triton ends it once the requests sent on it are answered (_end)."""
        try:
            async for result, error in responses:
                if self._ended:
                    continue
                if error is not None:  # a request refused: its model is unloading, or dropped the mux
                    self._end(Unavailable(f"mux on {self.address}: {error.message()}"))
                    # The model has not ended the mux: it would serve the requests just failed here
                    # (moving to other workers) to their end, then idle, holding its unload past
                    # Triton's exit timeout. Cancelled, it aborts them and ends the mux at once.
                    responses.cancel()
                    return
                batch = batch_of(result.get_response())
                if batch is None:
                    # Every request the model took ended before this: the rest never reached it.
                    self._end(Unavailable(f"mux on {self.address}: it ended before the request reached it"))
                    continue
                metrics.MUX_BATCHES.inc()
                metrics.MUX_DELTAS.inc(len(batch))
                for entry in batch:
                    inbox = self.members.get(entry.request_id)
                    if inbox is None:
                        continue
                    if isinstance(entry, wire.MuxError):
                        inbox.engine_failed(entry.message)
                    else:
                        inbox.put(entry.delta())
            self._end(Unavailable(f"mux on {self.address}: the stream ended"))
        except (InferenceServerException, grpc.aio.AioRpcError) as e:
            self._end(Unavailable(f"mux on {self.address}: {e}"))

    def _end(self, error: Unavailable) -> None:
        """No more requests on this mux; those waiting on it fail."""
        if self._ended:
            return
        self._ended, self.open = True, False
        self._outgoing.put_nowait(None)
        for inbox in self.members.values():
            inbox.fail(error)
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
                "parameters": {wire.MUX: self.id, wire.MUX_CANCEL: request_id},
            }

        try:
            async for _, error in self._client.stream_infer(one_request()):  # read to its end
                if error is not None:
                    log.warning("cancel of %s on %s: %s", request_id, self.address, error.message())
        except (InferenceServerException, grpc.aio.AioRpcError) as e:
            log.warning("cancel of %s on %s: %s", request_id, self.address, e)

    async def close(self) -> None:
        was_open = self.open
        self._end(Unavailable(f"mux on {self.address}: the gateway is closing"))
        if was_open and self._responses is not None:
            # Only a live mux: cancelling a stream just after its final response (the model ended
            # the mux) can leave Triton 2.51 holding the model (engine_client._pump).
            self._responses.cancel()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


def triton_request(model: str, request: wire.MuxRequest, parameters: dict) -> dict:
    """A request alone as a Triton request: its own tensors, its parameters and `parameters`."""
    ids = triton_aio.InferInput(wire.INPUT_IDS, [len(request.input_ids) // 4], "INT32")
    ids.set_data_from_numpy(np.frombuffer(request.input_ids, dtype="<i4"))
    inputs = [ids, _json_input(wire.SAMPLING_PARAMS, request.sampling_params)]
    if request.kv_transfer_params is not None:
        inputs.append(_json_input(wire.KV_TRANSFER_PARAMS, request.kv_transfer_params))
    return {
        "model_name": model,
        "inputs": inputs,
        "request_id": request.request_id,
        "parameters": {**request.parameters, **parameters} or None,
    }


def encoded_request(
    request_id: str,
    prompt_ids: list[int],
    sampling: SamplingParams | dict,
    kv_transfer_params: dict | None,
    parameters: dict,
) -> wire.MuxRequest:
    """A request's values encoded once, whether it goes alone or with others."""
    return wire.MuxRequest(
        request_id,
        np.asarray(prompt_ids, dtype="<i4").tobytes(),
        msgspec.json.encode(sampling),
        None if kv_transfer_params is None else msgspec.json.encode(kv_transfer_params),
        parameters,
    )


def _json_input(name: str, encoded: bytes) -> triton_aio.InferInput:
    tensor = triton_aio.InferInput(name, [1], "BYTES")
    tensor.set_data_from_numpy(np.asarray([encoded], dtype=np.object_))
    return tensor


def _ignored_input() -> triton_aio.InferInput:
    """Triton requires input_ids on every request; a mux's own requests (open, cancel) are not read."""
    ids = triton_aio.InferInput(wire.INPUT_IDS, [1], "INT32")
    ids.set_data_from_numpy(np.zeros(1, dtype=np.int32))
    return ids
