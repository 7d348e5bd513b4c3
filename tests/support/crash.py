"""Killing mesh processes the way a crash would (SIGKILL, no drain), and removing the shared
memory a SIGKILLed Triton cannot remove itself (each Python stub names its region in its argv)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import psutil

SHM_PREFIX = "triton_python_backend_shm_region_"


def crash(process: psutil.Process) -> Callable[[], None]:
    """SIGKILL a process and everything below it, at once; returns the clean-up to call once the
    test has seen what it wanted (it waits for the processes, then removes their shared memory)."""
    doomed = [*process.children(recursive=True), process]
    regions = []
    for p in doomed:
        try:
            regions += [arg.lstrip("/") for arg in p.cmdline() if arg.lstrip("/").startswith(SHM_PREFIX)]
            p.kill()
        except psutil.NoSuchProcess:
            pass

    def clean_up() -> None:
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in doomed) and time.monotonic() < deadline:
            time.sleep(0.05)
        for region in regions:
            (Path("/dev/shm") / region).unlink(missing_ok=True)

    return clean_up


def _alive(process: psutil.Process) -> bool:
    """Running, not a zombie: the killed processes' parents die too, and whoever adopts them
    need not reap them soon."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
