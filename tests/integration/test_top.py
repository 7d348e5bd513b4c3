"""`kvmesh top --once` against a mesh of simulated workers (auth on, as an operator runs it with the
admin key) while clients send requests: every live worker is listed, and the gateway's rates over
the interval are not empty."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading

import pytest

from bench.loadgen import run_level
from kvmesh.auth import ADMIN_KEY_ENV, bearer
from kvmesh.cli.local_mesh import LocalMesh
from kvmesh.v1 import router_pb2, router_pb2_grpc
from tests.support import fuzz
from tests.support.meshes import running

pytestmark = pytest.mark.timeout(300)
WORKERS = 2
PREAMBLE = " ".join(["A preamble every request shares, longer than a few KV blocks."] * 8)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    args = (*fuzz.SIM_MESH_ARGS, "--workers", str(WORKERS))
    with running(tmp_path_factory.mktemp("top-logs"), args, WORKERS) as mesh:
        yield mesh


@pytest.fixture
def load(mesh: LocalMesh):
    """Clients sending streamed completions until the test ends; prompts share a prefix (cache hits)."""
    stop = threading.Event()
    bodies = [{"model": mesh.model, "prompt": f"{PREAMBLE} Then number {i}.",
               "max_tokens": 32, "stream": True} for i in range(8)]  # fmt: skip
    url, headers = f"{mesh.http}/v1/completions", fuzz.key_headers(mesh.admin_key)

    def send() -> None:
        while not stop.is_set():
            asyncio.run(run_level(url, bodies, concurrency=4, headers=headers))

    sender = threading.Thread(target=send)
    sender.start()
    yield
    stop.set()
    sender.join(60)


def test_top_once_lists_every_worker_and_the_rates(mesh, load):
    with mesh.channel(mesh.router) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        reply = stub.Workers(router_pb2.WorkersRequest(), timeout=5, metadata=bearer(mesh.admin_key))
    ids = [w.record.id for w in reply.workers]
    assert len(ids) == WORKERS
    argv = [sys.executable, "-m", "kvmesh", "top", "--once", "--interval-s", "2", "--router", mesh.router,
            "--kvindex", mesh.kvindex, "--gateway-metrics", f"{mesh.http}/metrics"]  # fmt: skip
    env = os.environ | {ADMIN_KEY_ENV: mesh.admin_key, "COLUMNS": "200"}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr + done.stdout
    shown = done.stdout
    for worker_id in ids:
        assert worker_id in shown, shown
    requests = re.search(r"requests/s +(\d+\.\d) \(200 (\d+\.\d)\)", shown)  # total (by status)
    assert requests and float(requests[2]) > 0, shown
    assert "ms /" in shown, shown  # TTFT and ITL quantiles over the interval
    assert "kvindex at" not in shown and "gateway metrics at" not in shown, shown
