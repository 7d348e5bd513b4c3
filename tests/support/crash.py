"""Killing mesh processes the way a crash would (SIGKILL, no drain), and removing the shared
memory a SIGKILLed Triton cannot remove itself (each Python stub names its region in its argv)."""

from __future__ import annotations

from pathlib import Path

import psutil

SHM_PREFIX = "triton_python_backend_shm_region_"


def crash(process: psutil.Process) -> None:
    """SIGKILL a process and everything below it."""
    doomed = [*process.children(recursive=True), process]
    regions = []
    for p in doomed:
        try:
            regions += [arg.lstrip("/") for arg in p.cmdline() if arg.lstrip("/").startswith(SHM_PREFIX)]
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(doomed, timeout=10)
    for region in regions:
        (Path("/dev/shm") / region).unlink(missing_ok=True)
