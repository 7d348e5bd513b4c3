"""Triton's entry point for a kvmesh tensorrtllm model (decode); the engine and its Triton I/O live
in `engines/`."""

import locale

# The stub's embedded Python reads text files as ASCII whatever the environment says, and
# torch's templates are UTF-8: set the locale before anything imports torch.
locale.setlocale(locale.LC_CTYPE, "C.UTF-8")

import triton_python_backend_utils as pb_utils  # noqa: E402

from engines.triton_model import EngineModel  # noqa: E402
from engines.trtllm.engine import TrtllmEngine  # noqa: E402


class TritonPythonModel(EngineModel):
    pb_utils = pb_utils
    telemetry_name = "tensorrtllm-engine"

    def make_engine(self, engine_args):
        return TrtllmEngine(engine_args, role=self.role)
