"""Triton's entry point for kvmesh engine models: config.pbtxt names the engine and role; the
engine and its Triton I/O live in `engines/`."""

import locale

# The stub's embedded Python reads text files as ASCII whatever the environment says, and torch's
# templates are UTF-8: the locale is set before anything imports torch.
locale.setlocale(locale.LC_CTYPE, "C.UTF-8")

import triton_python_backend_utils as pb_utils  # noqa: E402

from engines.triton_model import entry_point  # noqa: E402

TritonPythonModel = entry_point(pb_utils)
