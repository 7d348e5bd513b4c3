"""Starts the mesh's processes, watches them, and stops them in order with no orphans."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen
    log: Path
    restarts: int = 0


@dataclass
class Supervisor:
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, module: str, args: list[str]) -> Child:
        """A kvmesh service: `python -m <module> <args>`."""
        return self.start_program(name, [sys.executable, "-m", module, *args])

    def start_program(self, name: str, argv: list[str]) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        child = Child(name, argv, self._spawn(argv, log), log)
        self.children.append(child)
        return child

    def restart(self, child: Child) -> None:
        _reap_group(child.process, timeout_s=30.0)  # what the dead one left behind stops first
        child.process = self._spawn(child.argv, child.log)
        child.restarts += 1

    def _spawn(self, argv: list[str], log: Path) -> subprocess.Popen:
        with open(log, "ab") as out:
            return subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,  # Ctrl-C reaches us; we stop the children in order
            )

    def dead(self) -> Child | None:
        return next((c for c in self.children if c.process.poll() is not None), None)

    def stop(self, timeout_s: float = 45.0) -> None:
        """Newest first (gateway before workers before router). SIGTERM goes to the child alone, so
        that a worker shuts its Triton down in order (stubs clean their /dev/shm); SIGKILL to the
        whole group only for what is still there after the timeout."""
        for child in reversed(self.children):
            if child.process.poll() is None:
                child.process.terminate()
        deadline = time.monotonic() + timeout_s
        for child in reversed(self.children):
            try:
                child.process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                pass
            _reap_group(child.process, timeout_s=max(deadline - time.monotonic(), 0.1))
        self.children.clear()


def _signal_group(process: subprocess.Popen, sig: int) -> bool:
    """False when nothing is left in the process's group."""
    try:
        os.killpg(process.pid, sig)
        return True
    except ProcessLookupError:
        return False


def _reap_group(process: subprocess.Popen, timeout_s: float) -> None:
    """Give the group's remaining processes (a Triton and its stubs shutting down, which clean
    their /dev/shm) until the timeout, then SIGKILL what is left."""
    deadline = time.monotonic() + timeout_s
    while _signal_group(process, 0) and time.monotonic() < deadline:
        time.sleep(0.2)
    _signal_group(process, signal.SIGKILL)


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def http_ok(url: str, verify: ssl.SSLContext | bool = True) -> bool:
    """`verify`: for https, the context holding the CA to trust (kvmesh.tls.trusting)."""
    try:
        return httpx.get(url, timeout=1.0, verify=verify).status_code == 200
    except httpx.HTTPError:
        return False
