"""What every kvmesh engine model does inside Triton's Python backend: build the engine its
config names, parse requests, run each on the engine's loop, and make every Triton call (send,
is_cancelled) on the Outbox thread. `model.py` files are one line of this (`entry_point`).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import uuid
from typing import Any

import msgspec
import numpy as np

from engines import metrics, mux
from engines import request as engine_request
from engines.outbox import Outbox
from engines.serving import serve_request
from kvmesh import engine_wire as wire
from kvmesh import logs, telemetry
from kvmesh.gc_heap import freeze_startup_heap
from kvmesh.repo.interface import ENGINE_CLASS
from kvmesh.repo.spec import Engine


def entry_point(pb_utils: Any) -> type:
    """The TritonPythonModel class of every kvmesh model.py: `pb_utils` exists only inside
    Triton's stub, so the stub's model.py hands it in."""
    return type("TritonPythonModel", (EngineModel,), {"pb_utils": pb_utils})


class EngineModel:
    """Runs the engine that config.pbtxt's parameters name (`engine`, `role`, `engine_args`; the
    repository tool writes them, kvmesh/repo/interface.py maps engines to their classes)."""

    pb_utils: Any  # triton_python_backend_utils

    def make_engine(self, engine: str, engine_args: dict[str, Any]):
        """An object with generate/abort (engines.serving.Engine), submit(coro), shutdown(),
        max_model_len, vocab_size and metrics_sample() (engines/metrics.py); on decode instances
        also check_kv_transfer(params), which raises engines.request.BadRequest for parameters its
        engine cannot use."""
        module, cls = ENGINE_CLASS[Engine(engine)]
        return getattr(importlib.import_module(module), cls)(engine_args, role=self.role)

    def initialize(self, args):
        parameters = json.loads(args["model_config"])["parameters"]
        engine = parameters["engine"]["string_value"]
        logs.configure("INFO", f"kvmesh-{engine}-engine")  # JSON lines as KVMESH_LOG_JSON says
        telemetry.setup_tracing(f"{engine}-engine")
        self.role = parameters["role"]["string_value"]
        self.engine = self.make_engine(engine, json.loads(parameters["engine_args"]["string_value"]))
        self.outbox = Outbox()
        self.muxes = mux.MuxHub()
        labels = {"model": args["model_name"], "version": args["model_version"]}  # as on Triton's nv_* metrics
        self.metrics = metrics.TritonMetrics(self.pb_utils, labels)
        self.metrics_export = self.engine.submit(metrics.export(self.engine.metrics_sample, self._publish_metrics))
        freeze_startup_heap()

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            parameters = json.loads(request.parameters() or "{}")
            io = _RequestIO(self.pb_utils, request, sender, self.outbox)
            if wire.MUX_OPEN in parameters:
                self.engine.submit(self.muxes.open(str(parameters[wire.MUX_OPEN]), io.send_batch, io.is_cancelled))
                continue
            if wire.MUX_CANCEL in parameters:
                self.engine.submit(self._cancel(str(parameters.get(wire.MUX)), str(parameters[wire.MUX_CANCEL]), io))
                continue
            if wire.MUX in parameters:
                batch = self.pb_utils.get_input_tensor_by_name(request, wire.MUX_REQUESTS)
                if batch is not None:
                    self._submit_batch(str(parameters[wire.MUX]), batch.as_numpy().reshape(-1)[0], io)
                    continue
            try:
                parsed, refused = self._parse(request, parameters), None
            except engine_request.BadRequest as e:
                parsed, refused = None, str(e)
            if wire.MUX in parameters:
                muxed = self._serve_muxed(str(parameters[wire.MUX]), request.request_id(), parsed, refused, io)
                self.engine.submit(muxed)
            elif refused is not None:
                self._refuse(sender, refused)
            else:
                self.engine.submit(serve_request(self.engine, parsed, io.send, io.send_error, io.is_cancelled))
        return None

    def _refuse(self, sender, message: str) -> None:
        pb = self.pb_utils
        response = pb.InferenceResponse(error=pb.TritonError(message, pb.TritonError.INVALID_ARG))
        sender.send(response, flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _submit_batch(self, mux_id: str, payload: bytes, io) -> None:
        """Several requests on a mux in one Triton request (MUX_REQUESTS): each parsed and refused
        on its own, all served in one hand-off to the engine's loop."""
        try:
            members = [self._parse_member(member) for member in wire.decode_requests(payload)]
        except msgspec.DecodeError as e:  # no request id to fail it under: the Triton request fails
            self._refuse(io.sender, f"{wire.MUX_REQUESTS}: {e}")
            return
        self.engine.submit(self._serve_batch(mux_id, members, io))

    async def _serve_muxed(self, mux_id: str, request_id: str, parsed, refused: str | None, io):
        """On the engine's loop: everything of a request on a mux goes in its batches."""
        joined = self.muxes.get(mux_id)
        if joined is None:  # ended before the request came: the one response on its stream
            await io.send_error(f"mux {mux_id} is not open")
            return
        await self._serve_member(joined, request_id, parsed, refused, io.end)

    async def _serve_batch(self, mux_id: str, members: list, io):
        """On the engine's loop: several requests on a mux sent as one Triton request, which ends
        (the final flag alone) once all of them have."""
        joined = self.muxes.get(mux_id)
        if joined is None:
            await io.send_error(f"mux {mux_id} is not open")
            return
        end = mux.SharedEnd(io.end, len(members))
        serving = (self._serve_member(joined, *member, end.member()) for member in members)
        await asyncio.gather(*serving, return_exceptions=True)  # one's failure is its own

    async def _serve_member(self, joined: mux.Mux, request_id: str, parsed, refused: str | None, end):
        send_error = mux.member_send_error(joined, request_id, end)
        if refused is not None:
            await send_error(refused)
            return
        send = mux.member_send(joined, request_id, end)
        await serve_request(self.engine, parsed, send, send_error, mux.member_is_cancelled(joined, request_id))

    async def _cancel(self, mux_id: str, request_id: str, io) -> None:
        """A client cancelling one of its muxed requests; the answer is an empty batch."""
        self.muxes.cancel(mux_id, request_id)
        await io.send_batch(wire.encode_batch([]), True)

    def _parse(self, request, parameters: dict):
        ids = self.pb_utils.get_input_tensor_by_name(request, wire.INPUT_IDS)
        sampling = self.pb_utils.get_input_tensor_by_name(request, wire.SAMPLING_PARAMS)
        kv_transfer = self.pb_utils.get_input_tensor_by_name(request, wire.KV_TRANSFER_PARAMS)
        return self._checked(
            request.request_id() or uuid.uuid4().hex,
            ids.as_numpy() if ids is not None else None,
            sampling.as_numpy().reshape(-1)[0] if sampling is not None else None,
            parameters,
            kv_transfer.as_numpy().reshape(-1)[0] if kv_transfer is not None else None,
        )

    def _parse_member(self, member: wire.MuxRequest) -> tuple[str, object, str | None]:
        """(request id, the parsed request or None, why it was refused or None)."""
        try:
            try:
                ids = np.frombuffer(member.input_ids, dtype="<i4")
            except ValueError as e:
                raise engine_request.BadRequest(f"{wire.INPUT_IDS}: {e}") from None
            checked = self._checked(
                member.request_id, ids, member.sampling_params, member.parameters, member.kv_transfer_params
            )
            return member.request_id, checked, None
        except engine_request.BadRequest as e:
            return member.request_id, None, str(e)

    def _checked(self, request_id: str, ids, sampling_json, parameters: dict, kv_transfer_json):
        parsed = engine_request.parse(
            request_id,
            ids,
            sampling_json,
            parameters,
            max_model_len=self.engine.max_model_len,
            vocab_size=self.engine.vocab_size,
            kv_transfer_json=kv_transfer_json,
            role=self.role,
        )
        if parsed.kv_transfer_params:
            self.engine.check_kv_transfer(parsed.kv_transfer_params)
        return parsed

    def _publish_metrics(self, sample: metrics.EngineSample):
        return self.outbox.put(lambda: self.metrics.publish(sample))

    def finalize(self):
        self.metrics_export.cancel()
        self.engine.shutdown()
        self.outbox.close()
        self.metrics.close()


class _RequestIO:
    """One request's calls to Triton, all made on the outbox thread, in order. Once the final
    response is out Triton frees the request, so nothing may touch it after that."""

    def __init__(self, pb_utils, request, sender, outbox):
        self.pb_utils, self.request, self.sender, self.outbox = pb_utils, request, sender, outbox
        self.done = False

    def _call(self, fn):
        return asyncio.wrap_future(self.outbox.put(fn))

    def _final(self, response):
        self.sender.send(response, flags=self.pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        self.done = True

    def send(self, delta, final):
        if final:
            return self._call(lambda: self._final(self._response(delta)))
        return self._call(lambda: self.sender.send(self._response(delta)))

    def end(self):
        """The final flag and no response: Triton sends a client nothing for it."""
        return self._call(lambda: self._final(None))

    def send_batch(self, payload: bytes, final: bool):
        """A mux's batch (docs/mux.md) on this request's stream."""
        tensor = self.pb_utils.Tensor(wire.MUX_DELTAS, np.asarray([payload], dtype=np.object_))
        response = self.pb_utils.InferenceResponse(output_tensors=[tensor])
        if final:
            return self._call(lambda: self._final(response))
        return self._call(lambda: self.sender.send(response))

    def send_error(self, message):
        error = self.pb_utils.TritonError(message)
        return self._call(lambda: self._final(self.pb_utils.InferenceResponse(error=error)))

    def is_cancelled(self):
        return self._call(lambda: not self.done and self.request.is_cancelled())

    def _response(self, delta):
        # Per-request counts only ride on the final response: each tensor costs the stub, Triton
        # and the client time on every one of the many streamed responses.
        tensor = self.pb_utils.Tensor
        tensors = [tensor(wire.OUTPUT_IDS, np.asarray(delta.token_ids, dtype=np.int32))]
        if delta.finish_reason is not None:
            tensors += [
                tensor(wire.FINISH_REASON, np.asarray([delta.finish_reason], dtype=np.object_)),
                tensor(wire.PROMPT_TOKENS, np.asarray([delta.prompt_tokens], dtype=np.int32)),
                tensor(wire.CACHED_TOKENS, np.asarray([delta.cached_tokens], dtype=np.int32)),
            ]
        if delta.kv_transfer_params is not None:
            transfer = np.asarray([json.dumps(delta.kv_transfer_params)], np.object_)
            tensors.append(tensor(wire.KV_TRANSFER_PARAMS, transfer))
        return self.pb_utils.InferenceResponse(output_tensors=tensors)
