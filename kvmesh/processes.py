"""Stopping a child process."""

from __future__ import annotations

import signal
import subprocess


def terminate(process: subprocess.Popen, grace_s: float, sig: int = signal.SIGTERM) -> None:
    """`sig` (SIGTERM), and SIGKILL if it has not exited within `grace_s`; returns once it is gone."""
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
