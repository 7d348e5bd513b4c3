"""Starts the mesh's processes, watches them, restarts one that dies (with backoff, never giving
up), and stops them in order with no orphans."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx


@dataclass(frozen=True)
class Backoff:
    """How long a process that died waits before it starts again: `initial_s` after its first
    crash, doubling with each crash in a row up to `cap_s`, so that one that cannot start costs
    little and one that crashed once is back at once. A process that ran `healthy_s` before it
    died starts the count afresh."""

    initial_s: float = 0.5
    cap_s: float = 30.0
    healthy_s: float = 60.0

    def delay_s(self, crashes_in_a_row: int) -> float:
        return min(self.initial_s * 2 ** (crashes_in_a_row - 1), self.cap_s)


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen
    log: Path
    started_s: float  # the supervisor's clock at the last start
    restarts: int = 0
    crashes_in_a_row: int = 0
    restart_at_s: float | None = None  # set while it is dead and waiting out its backoff


@dataclass
class Supervisor:
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    children: list[Child] = field(default_factory=list)
    backoff: Backoff = field(default_factory=Backoff)
    clock: Callable[[], float] = time.monotonic

    def start(self, name: str, module: str, args: list[str]) -> Child:
        """A kvmesh service: `python -m <module> <args>`."""
        return self.start_program(name, [sys.executable, "-m", module, *args])

    def start_program(self, name: str, argv: list[str]) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        child = Child(name, argv, self._spawn(argv, log), log, started_s=self.clock())
        self.children.append(child)
        return child

    def newly_dead(self) -> list[Child]:
        """The children found dead since the last call, each given the time of its restart."""
        found = []
        now = self.clock()
        for child in self.children:
            if child.restart_at_s is not None or child.process.poll() is None:
                continue
            if now - child.started_s >= self.backoff.healthy_s:
                child.crashes_in_a_row = 0
            child.crashes_in_a_row += 1
            child.restart_at_s = now + self.backoff.delay_s(child.crashes_in_a_row)
            found.append(child)
        return found

    def restart_due(self) -> list[Child]:
        """Starts again the dead children whose backoff is over; returns them."""
        due = [c for c in self.children if c.restart_at_s is not None and c.restart_at_s <= self.clock()]
        for child in due:
            self.restart(child)
        return due

    def restart(self, child: Child) -> None:
        _reap_group(child.process, timeout_s=30.0)  # what the dead one left behind stops first
        child.process = self._spawn(child.argv, child.log)
        child.started_s, child.restart_at_s = self.clock(), None
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
