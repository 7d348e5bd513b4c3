"""Triton lifecycle and tensor I/O for kvmesh's vLLM model; the engine lives in `engines/`."""

import locale

# The stub's embedded Python reads text files as ASCII whatever the environment says, and
# torch's inductor templates are UTF-8: set the locale before anything imports torch or vllm.
locale.setlocale(locale.LC_CTYPE, "C.UTF-8")

import asyncio  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import uuid  # noqa: E402

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from engines import request as engine_request  # noqa: E402
from engines.outbox import Outbox  # noqa: E402
from engines.serving import serve_request  # noqa: E402
from engines.vllm_engine import VllmEngine  # noqa: E402
from kvmesh import telemetry  # noqa: E402

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonPythonModel:
    def initialize(self, args):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        telemetry.setup_tracing("engine")
        config = json.loads(args["model_config"])
        engine_args = json.loads(config["parameters"]["engine_args"]["string_value"])
        self.engine = VllmEngine(engine_args)
        self.outbox = Outbox()

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                parsed = self._parse(request)
            except engine_request.BadRequest as e:
                error = pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG)
                sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)
                continue
            io = _RequestIO(request, sender, self.outbox)
            self.engine.submit(serve_request(self.engine, parsed, io.send, io.send_error, io.is_cancelled))
        return None

    def _parse(self, request):
        ids = pb_utils.get_input_tensor_by_name(request, "input_ids")
        sampling = pb_utils.get_input_tensor_by_name(request, "sampling_params")
        return engine_request.parse(
            request.request_id() or uuid.uuid4().hex,
            ids.as_numpy() if ids is not None else None,
            sampling.as_numpy().reshape(-1)[0] if sampling is not None else None,
            request.parameters(),
            max_model_len=self.engine.max_model_len,
            vocab_size=self.engine.vocab_size,
        )

    def finalize(self):
        self.engine.shutdown()
        self.outbox.close()


class _RequestIO:
    """One request's calls to Triton, all made on the outbox thread, in order. Once the final
    response is out Triton frees the request, so nothing may touch it after that."""

    def __init__(self, request, sender, outbox):
        self.request, self.sender, self.outbox = request, sender, outbox
        self.done = False

    def _call(self, fn):
        return asyncio.wrap_future(self.outbox.put(fn))

    def _final(self, response):
        self.sender.send(response, flags=FINAL)
        self.done = True

    def send(self, delta, final):
        if final:
            return self._call(lambda: self._final(_response(delta)))
        return self._call(lambda: self.sender.send(_response(delta)))

    def send_error(self, message):
        return self._call(lambda: self._final(pb_utils.InferenceResponse(error=pb_utils.TritonError(message))))

    def is_cancelled(self):
        return self._call(lambda: not self.done and self.request.is_cancelled())


def _response(delta):
    # Per-request counts only ride on the final response: each tensor costs the stub, Triton and
    # the client time on every one of the many streamed responses.
    tensors = [pb_utils.Tensor("output_ids", np.asarray(delta.token_ids, dtype=np.int32))]
    if delta.finish_reason is not None:
        tensors += [
            pb_utils.Tensor("finish_reason", np.asarray([delta.finish_reason], dtype=np.object_)),
            pb_utils.Tensor("prompt_tokens", np.asarray([delta.prompt_tokens], dtype=np.int32)),
            pb_utils.Tensor("cached_tokens", np.asarray([delta.cached_tokens], dtype=np.int32)),
        ]
    return pb_utils.InferenceResponse(output_tensors=tensors)
