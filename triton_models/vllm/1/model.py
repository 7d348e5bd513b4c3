"""Triton's entry point for kvmesh's vLLM model; the engine and the Triton I/O live in `engines/`."""

import locale

# The stub's embedded Python reads text files as ASCII whatever the environment says, and
# torch's inductor templates are UTF-8: set the locale before anything imports torch or vllm.
locale.setlocale(locale.LC_CTYPE, "C.UTF-8")

import triton_python_backend_utils as pb_utils  # noqa: E402

from engines.triton_model import EngineModel  # noqa: E402
from engines.vllm_engine import VllmEngine  # noqa: E402


class TritonPythonModel(EngineModel):
    pb_utils = pb_utils

    def make_engine(self, engine_args):
        return VllmEngine(engine_args)
