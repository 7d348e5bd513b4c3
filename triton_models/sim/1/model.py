"""Triton's entry point for a kvmesh sim model (aggregated); the engine and its Triton I/O live
in `engines/`."""

import triton_python_backend_utils as pb_utils

from engines.sim.engine import SimEngine
from engines.triton_model import EngineModel


class TritonPythonModel(EngineModel):
    pb_utils = pb_utils
    telemetry_name = "sim-engine"

    def make_engine(self, engine_args):
        return SimEngine(engine_args, role=self.role)
