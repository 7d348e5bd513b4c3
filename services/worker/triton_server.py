"""The real `tritonserver` from the nvidia-pytriton wheel on a model repository: started, waited
for, its models loaded and unloaded through the repository API, stopped with nothing left behind.

Loading a model runs its code, so the repository API and every other admin API (ADMIN_APIS) take
a key, per Triton process, that only this worker's client sends (header ADMIN_HEADER); health,
metadata and inference stay open to the gateway. With mutual TLS, Triton's gRPC asks every
caller for a certificate of the mesh's CA and its HTTP, which has no TLS, is off.

The three settings Triton's Python backend needs outside NVIDIA's container are made here (see
docs/versions.md): the Python stub copied beside the backend, LD_LIBRARY_PATH at this interpreter's
libpython (and the wheel's own libraries), and this venv first on PATH (the stub takes sys.prefix
from the first python3 on PATH and ignores PYTHONPATH).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

import psutil
import tritonclient.grpc.aio as triton_aio

from kvmesh import grpc_server, processes
from kvmesh.models import cache_dir
from kvmesh.tls import MutualTls

log = logging.getLogger("kvmesh.worker")


ADMIN_HEADER = "kvmesh-admin-key"
# Triton's gRPC front looks for a restricted protocol's key under this prefix (its HTTP, under the bare name).
GRPC_ADMIN_HEADER = "triton-grpc-protocol-" + ADMIN_HEADER
ADMIN_APIS = "model-repository,model-config,shared-memory,statistics,trace,logging"
# The gRPC server option (grpc_server.ACCEPT_PINGS) whose value Triton is given as a flag.
PING_INTERVAL_ARG = "grpc.http2.min_ping_interval_without_data_ms"


@dataclass(frozen=True)
class TritonPorts:
    grpc: int
    http: int
    metrics: int


def triton_home() -> Path:
    spec = find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("nvidia-pytriton is not installed: run scripts/setup.sh")
    return Path(next(iter(spec.submodule_search_locations))) / "tritonserver"


def wheel_libs() -> Path:
    return triton_home().parent.parent / "nvidia_pytriton.libs"


def backend_directory() -> Path:
    """A private copy of the Python backend with this interpreter's stub beside it."""
    home = triton_home()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    target = cache_dir() / "triton" / f"backends-{version}"
    python_dir = target / "python"
    stub = home / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not (python_dir / stub.name).exists():
        python_dir.mkdir(parents=True, exist_ok=True)
        for source in [*(home / "backends" / "python").glob("*.*"), stub]:
            shutil.copy2(source, python_dir / source.name)
    return target


# A killed worker must not leave its Triton behind. util-linux's setpriv (Essential in Debian) sets
# the parent-death signal and execs tritonserver (same pid). Not a preexec_fn: that runs Python in
# a fork of a process whose gRPC threads may hold locks or be restarted by gRPC's fork handlers;
# CI saw such a child hang before exec, logging gRPC's "epoll_wait error: Bad file descriptor".
DIE_WITH_PARENT = ["setpriv", "--pdeathsig", "TERM", "--"]


def start(
    model_repository: Path,
    host: str,
    ports: TritonPorts,
    env: dict[str, str],
    log_file: Path | None,
    admin_key: str,
    tls: MutualTls | None = None,
) -> subprocess.Popen:
    """The key is on tritonserver's command line (Triton takes it no other way): local users of
    this host can read it, remote callers cannot."""
    argv = [
        *DIE_WITH_PARENT,
        str(triton_home() / "bin" / "tritonserver"),
        f"--model-repository={model_repository}",
        f"--backend-directory={backend_directory()}",
        "--model-control-mode=explicit",
        f"--grpc-address={host}",
        f"--grpc-port={ports.grpc}",
        f"--grpc-restricted-protocol={ADMIN_APIS}:{ADMIN_HEADER}={admin_key}",
        f"--http-address={host}",
        f"--http-port={ports.http}",
        f"--http-restricted-api={ADMIN_APIS}:{ADMIN_HEADER}={admin_key}",
        "--allow-metrics=true",
        f"--metrics-address={host}",
        f"--metrics-port={ports.metrics}",
        "--pinned-memory-pool-byte-size=0",
        "--exit-timeout-secs=15",
        "--log-verbose=0",
        # `kvmesh repo build` writes complete configs; auto-completing one launches a stub of its
        # own before the instance's: 1.6 s of the simulated model's 2.0-s load here.
        "--disable-auto-complete-config",
        # Gateways ping their streams to Triton (grpc_server.KEEPALIVE); Triton must accept pings
        # that frequent, or it closes their connections ("too_many_pings").
        f"--grpc-http2-min-recv-ping-interval-without-data={dict(grpc_server.ACCEPT_PINGS)[PING_INTERVAL_ARG]}",
    ]
    if tls:
        argv += ["--grpc-use-ssl-mutual=true", f"--grpc-server-cert={tls.cert}", f"--grpc-server-key={tls.key}",
                 f"--grpc-root-cert={tls.ca}", "--allow-http=false"]  # fmt: skip
    venv_bin = str(Path(sys.executable).parent)
    full_env = {
        **os.environ,
        "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
        # The stub's RPATH points into the wheel; our private copy finds the wheel's libraries here.
        "LD_LIBRARY_PATH": os.pathsep.join([sysconfig.get_config_var("LIBDIR") or "", str(wheel_libs())]),
        "HF_HUB_OFFLINE": "1",
        **env,
    }
    out = open(log_file, "ab") if log_file else None  # noqa: SIM115 - handed to the child
    return subprocess.Popen(argv, env=full_env, stdout=out, stderr=subprocess.STDOUT if out else None)


def stub_processes(pid: int) -> list[psutil.Process]:
    """The Python-backend stubs (one per model instance) of the tritonserver `pid`."""
    try:
        children = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []
    stubs = []
    for child in children:
        try:
            if child.name().startswith("triton_python"):  # triton_python_backend_stub, cut to 15 characters
                stubs.append(child)
        except psutil.NoSuchProcess:
            pass
    return stubs


SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "triton_python_backend_shm_region_"


def shm_regions(pid: int) -> list[Path]:
    """The shared-memory regions of the tritonserver `pid`'s stubs (each stub is told its own on
    its command line)."""
    regions = []
    for stub in stub_processes(pid):
        try:
            regions += [SHM_DIR / a.lstrip("/") for a in stub.cmdline() if a.lstrip("/").startswith(SHM_PREFIX)]
        except psutil.NoSuchProcess:
            pass
    return regions


def stop(process: subprocess.Popen) -> None:
    # Triton kills a stub whose model does not unload within its exit timeout, and then leaves
    # that stub's region behind. Stubs are looked for until Triton is gone: one may be launched
    # while it stops (a model still loading).
    regions = set(shm_regions(process.pid))
    stopping = threading.Thread(target=processes.terminate, args=(process,), kwargs={"grace_s": 30})
    stopping.start()
    while stopping.is_alive():
        regions.update(shm_regions(process.pid))
        stopping.join(0.2)
    for region in regions:
        if region.exists():
            log.warning("removing %s, left behind by Triton", region.name)
            region.unlink(missing_ok=True)


@dataclass
class Triton:
    """A tritonserver this worker started, and a client on its gRPC port that holds the admin key
    (and the worker's certificate under mutual TLS). Every wait fails fast if the server dies."""

    process: subprocess.Popen
    host: str
    ports: TritonPorts
    admin_key: str
    tls: MutualTls | None = None
    client: triton_aio.InferenceServerClient = field(init=False)

    def __post_init__(self) -> None:
        creds = self.tls.channel_credentials() if self.tls else None
        self.client = triton_aio.InferenceServerClient(self.address, creds=creds)

    @property
    def admin(self) -> dict[str, str]:
        """The gRPC metadata an admin call sends."""
        return {GRPC_ADMIN_HEADER: self.admin_key}

    @property
    def address(self) -> str:
        return f"{self.host}:{self.ports.grpc}"

    async def wait_live(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"tritonserver exited with code {self.process.returncode} before it was live")
            try:
                # Asked only once the port listens: a gRPC call refused before that puts the channel
                # into a 1-s reconnect backoff, a second of every worker's start.
                _, writer = await asyncio.open_connection(self.host, self.ports.grpc)
                writer.close()
                if await self.client.is_server_live():
                    return
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            if time.monotonic() > deadline:
                raise SystemExit("tritonserver did not become live in time")
            await asyncio.sleep(0.02)

    async def load(self, name: str, config_json: str, timeout_s: float) -> None:
        """Loads through the repository API, failing fast if Triton dies while loading."""
        loading = asyncio.ensure_future(
            self.client.load_model(name, headers=self.admin, config=config_json, client_timeout=timeout_s)
        )
        while not loading.done():
            if self.process.poll() is not None:
                loading.cancel()
                raise SystemExit(f"tritonserver exited with code {self.process.returncode} while loading {name}")
            await asyncio.wait({loading}, timeout=0.5)
        loading.result()

    async def unload(self, name: str, timeout_s: float) -> None:
        """Returns once the model's stub processes are gone (or after `timeout_s`): Triton finishes
        the requests in flight first, and reports the model unloaded before its instance is gone."""
        stubs = stub_processes(self.process.pid)
        await self.client.unload_model(name, headers=self.admin)
        _, alive = await asyncio.to_thread(psutil.wait_procs, stubs, timeout_s)
        if alive:
            log.warning("%s: %d stub processes still running %.0fs after its unload", name, len(alive), timeout_s)

    async def close(self) -> None:
        await self.client.close()
        stop(self.process)
