"""`--procs N`: N gateway processes serve the same HTTP (OpenAI) and gRPC ports, for more than one
core. Each process binds both ports itself with SO_REUSEPORT and the kernel spreads new
connections over them (gRPC sets the option on its own on Linux; the HTTP socket is bound here and
handed to uvicorn). Each has its own router sessions, Triton clients, muxes and admission queue;
quotas and the workers' load are in Redis already, shared.

The process started is the parent, and serves too. It binds first, so that port 0 means one free
port for all (the others are given the port it got), then starts the N-1 others (its own command
line and environment, those ports appended) and starts one again when it dies, after `kvmesh up`'s
backoff. SIGTERM or SIGINT to it drains every process: it passes SIGTERM on, each finishes its
streams in flight (up to --drain-timeout-s) and exits, the parent last. A child gets SIGTERM when
its parent dies, however it dies (parent-death signal): none is left serving the ports alone.

Metrics: prometheus_client's multiprocess mode. Every process writes its metrics into files in a
directory the parent makes (PROMETHEUS_MULTIPROC_DIR, removed when it exits), and /metrics, on
whichever process a scrape reaches, sums them all: counters and histograms over every process that
ran, gauges as their `multiprocess_mode` says. prometheus_client picks its mode when it is
imported, which the settings themselves do: so a parent, once it has read --procs, puts the
directory in its environment and executes itself again (the same pid; ~0.5 s). With --procs 1
none of this happens: one process, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

import uvloop
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from kvmesh.cli.supervisor import Backoff
from kvmesh.settings import load
from services.gateway.config import GatewaySettings

log = logging.getLogger("kvmesh.gateway")

METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own
GROUP_ENV = "KVMESH_GATEWAY_GROUP"  # the parent's pid, in its environment and its children's
INDEX_ENV = "KVMESH_GATEWAY_GROUP_INDEX"  # a child's number: 2 … N
METRICS_DIR_PREFIX = "kvmesh-gateway-metrics-"
# A child given SIGTERM has --drain-timeout-s to finish its streams, then this long to exit.
EXIT_GRACE_S = 10.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h
POLL_S = 0.25  # how often the parent looks for a child that exited


def main() -> None:
    settings = load(GatewaySettings)
    process = this_process(settings)
    # Here, not at the top: main.py's imports take seconds (the tokenizers' libraries), which a
    # parent about to execute itself again would pay twice.
    from services.gateway.main import run

    try:
        uvloop.run(run(settings, process))
    finally:
        process.close()


class Process:
    """A gateway alone (--procs 1): uvicorn binds its HTTP port, /metrics is this process's."""

    label = ""  # ends its lifecycle lines

    def http_sockets(self, host: str, port: int) -> list[socket.socket] | None:
        return None

    def serving_metrics(self, app: ASGIApp) -> ASGIApp:
        return app

    def start_others(self, http_port: int, grpc_port: int) -> None:
        """Once this process serves, on the ports it bound."""

    async def drain_others(self, timeout_s: float) -> None:
        """While this process drains."""

    def close(self) -> None:
        """Once this process is done."""


class Child(Process):
    """One of --procs N: binds the ports the parent bound, serves every process's metrics."""

    def __init__(self, index: int, procs: int):
        self.label = f" [process {index}/{procs}, pid {os.getpid()}]"

    def http_sockets(self, host: str, port: int) -> list[socket.socket] | None:
        return [bound(host, port, reuse_port=True)]

    def serving_metrics(self, app: ASGIApp) -> ASGIApp:
        return AllProcessesMetrics(app)


class Parent(Child):
    """Process 1 of --procs N: starts the others once it serves, keeps them running, drains them."""

    def __init__(self, procs: int, metrics_dir: Path, command: list[str] | None = None, backoff: Backoff | None = None):
        """`command`: what starts another process, the ports appended (default: this process's command line)."""
        super().__init__(1, procs)
        self.procs, self.metrics_dir, self.backoff = procs, metrics_dir, backoff or Backoff()
        self.command = command or [sys.executable, *sys.orig_argv[1:]]
        self.children: dict[int, subprocess.Popen] = {}  # by index, the latest of each
        self._keepers: list[asyncio.Task] = []
        self._stopping = asyncio.Event()

    def start_others(self, http_port: int, grpc_port: int) -> None:
        argv = [*self.command, "--http-port", str(http_port), "--grpc-port", str(grpc_port)]
        self._keepers = [asyncio.create_task(self._keep(index, argv)) for index in range(2, self.procs + 1)]

    async def _keep(self, index: int, argv: list[str]) -> None:
        """Process `index`, started again each time it dies until the drain, after a backoff that
        grows while it keeps dying (kvmesh/cli/supervisor.py's, as `kvmesh up`'s)."""
        env = {**os.environ, INDEX_ENV: str(index)}
        loop = asyncio.get_running_loop()
        crashes = 0
        while not self._stopping.is_set():
            started = loop.time()
            # subprocess's vfork and exec: a fork() would run gRPC's fork handlers in this threaded process.
            child = self.children[index] = subprocess.Popen(argv, env=env)
            log.info("gateway process %d/%d started (pid %d)", index, self.procs, child.pid)
            while (code := child.poll()) is None:
                await asyncio.sleep(POLL_S)
            mark_process_dead(child.pid, str(self.metrics_dir))  # its live gauges go; its counters stay
            if self._stopping.is_set():
                level = logging.INFO if code == 0 else logging.WARNING
                log.log(level, "gateway process %d/%d (pid %d) exited with code %d", index, self.procs, child.pid, code)
                return
            crashes = 1 if loop.time() - started >= self.backoff.healthy_s else crashes + 1
            delay_s = self.backoff.delay_s(crashes)
            log.warning("gateway process %d/%d (pid %d) exited with code %d; starting it again in %.1fs",
                        index, self.procs, child.pid, code, delay_s)  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay_s)

    async def drain_others(self, timeout_s: float) -> None:
        self._stopping.set()
        for child in self.children.values():
            _signal(child, signal.SIGTERM)  # one still starting dies at once: nothing in flight yet
        if not self._keepers:
            return
        await asyncio.wait(self._keepers, timeout=timeout_s + EXIT_GRACE_S)
        for index, child in self.children.items():
            if child.poll() is None:
                log.warning("gateway process %d/%d (pid %d) still runs after the drain: killed",
                            index, self.procs, child.pid)  # fmt: skip
                _signal(child, signal.SIGKILL)
        await asyncio.gather(*self._keepers)

    def close(self) -> None:
        shutil.rmtree(self.metrics_dir, ignore_errors=True)


def _signal(child: subprocess.Popen, sig: int) -> None:
    if child.poll() is None:
        child.send_signal(sig)


def this_process(settings: GatewaySettings) -> Process:
    """This process's part: alone (--procs 1), the parent, or one of its children. A parent not yet
    in multiprocess mode executes itself again in it: then this never returns."""
    parent = os.environ.get(GROUP_ENV)
    if parent is None:
        if settings.procs == 1:
            return Process()
        _exec_as_parent(settings)
    if int(parent) == os.getpid():
        return Parent(settings.procs, Path(os.environ[METRICS_DIR_ENV]))
    _die_with(int(parent))
    return Child(int(os.environ[INDEX_ENV]), settings.procs)


def _exec_as_parent(settings: GatewaySettings) -> NoReturn:
    # SO_REUSEPORT would let this group share a port with anything already listening there with
    # the option (another gateway's processes, a stale child): refuse a taken port instead.
    for port in (settings.http_port, settings.grpc_port):
        if port:
            try:
                bound(settings.host, port, reuse_port=False).close()
            except OSError as e:
                raise SystemExit(f"gateway: cannot listen on {settings.host}:{port}: {e.strerror}") from None
    remove_stale_metrics_dirs()
    metrics_dir = tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-")
    os.environ |= {METRICS_DIR_ENV: metrics_dir, GROUP_ENV: str(os.getpid())}
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    finally:  # reached only when the exec failed
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _die_with(parent_pid: int) -> None:
    """SIGTERM (a drain) to this process when its parent dies, whichever way it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent_pid:  # it died before the signal was asked for
        raise SystemExit("gateway: its parent process is gone")


def bound(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A TCP socket bound to host:port (0: a free port), not yet listening."""
    # The family uvicorn (and --procs 1) would bind: IPv6 only for an address with ':' (`localhost`
    # often resolves to ::1 first, where uvicorn binds 127.0.0.1).
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, family, socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn's own: past TIME_WAIT
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def remove_stale_metrics_dirs() -> None:
    """The metrics directories of parents that are gone (killed, so they could not remove theirs)."""
    for path in Path(tempfile.gettempdir()).glob(f"{METRICS_DIR_PREFIX}*"):
        pid = path.name.removeprefix(METRICS_DIR_PREFIX).partition("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


class AllProcessesMetrics:
    """GET /metrics answered with every process's metrics summed, whichever process the scrape reached."""

    def __init__(self, app: ASGIApp, path: str | None = None):
        """`path`: the metrics directory; default PROMETHEUS_MULTIPROC_DIR."""
        self.app = app
        self.registry = CollectorRegistry()
        MultiProcessCollector(self.registry, path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/metrics" and scope["method"] in ("GET", "HEAD"):
            response = Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
