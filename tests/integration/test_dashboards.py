"""Every panel of every Grafana dashboard shows data on a live mesh: a disaggregated sim mesh with
the planner (dry run) and its Prometheus (1-s scrapes) under a load of shared-prefix prompts, some
too long for the prefill timeout (local-prefill fallbacks). Each target's query, its variables as
"All", is evaluated at the end of the load and must answer finite values. The Overview's queries
over the load window are drawn to a PNG (into $KVMESH_DOCS_IMAGES when set: docs/images)."""

from __future__ import annotations

import asyncio
import math
import os
import random
import re
import time
from pathlib import Path

import httpx
import pytest

from bench.loadgen import run_level
from kvmesh.cli.local_mesh import LocalMesh
from tests.support import dashboards, panel_png
from tests.support.waiting import wait_for

INTERVAL_S = 1.0
# Prefill of a 300-token prompt takes ~25 ms at this speed-up, of a 3,000-token one ~0.45 s: past
# the gateway's prefill timeout, so those fall back to prefilling on the decode worker.
ENGINE_ARGS = '{"timing": {"speedup": 10}}'
PREFILL_TIMEOUT_S = "0.15"
RATE_WINDOW = "15s"  # Grafana's $__rate_interval at 1-s scrapes would be 4 s; a few more samples here
LOAD_S = 40


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, sim_profile):
    args = ("--engine", "sim", "--engine-args", ENGINE_ARGS, "--disagg", "--disagg-threshold", "64",
            "--planner", "--planner-profile", str(sim_profile), "--planner-args=--dry-run --interval-s 2",
            "--prometheus", "--prometheus-scrape-interval-s", str(INTERVAL_S))  # fmt: skip
    env = {"KVMESH_GATEWAY_PREFILL_TIMEOUT_S": PREFILL_TIMEOUT_S}
    mesh = LocalMesh.start(tmp_path_factory.mktemp("dashboards-mesh-logs"), extra_args=args, env=env)
    mesh.wait_for_workers(2)
    yield mesh
    assert mesh.stop() == 0, mesh.log("up")


def bodies(model: str, count: int) -> list[dict]:
    """Prompts of a few shared 256-token prefixes, each with its own 128-token tail (uncached: sent
    to the prefill worker), and one in ten a 3,000-token prompt of its own."""
    rng = random.Random(31)
    prefixes = [[rng.randrange(1000, 40000) for _ in range(256)] for _ in range(4)]
    out = []
    for i in range(count):
        length = 3000 if i % 10 == 9 else 128
        prompt = (prefixes[i % 4] if length == 128 else []) + [rng.randrange(1000, 40000) for _ in range(length)]
        out.append({"model": model, "prompt": prompt, "max_tokens": 32, "stream": True, "ignore_eos": True})
    return out


def load(mesh: LocalMesh) -> tuple[float, float]:
    """Requests for LOAD_S seconds at concurrency 4; the window it covered."""
    start = time.time()
    url = f"{mesh.http}/v1/completions"
    while time.time() - start < LOAD_S:
        asyncio.run(run_level(url, bodies(mesh.model, 40), concurrency=4))
    return start, time.time()


def query(mesh: LocalMesh, expr: str, at: float) -> dict:
    reply = httpx.get(f"{mesh.prometheus}/api/v1/query", params={"query": expr, "time": at}, timeout=10).json()
    assert reply["status"] == "success", f"{expr}: {reply.get('error')}"
    return reply["data"]


def finite_series(data: dict) -> int:
    values = [s["value"][1] for s in data["result"]] if data["resultType"] == "vector" else [data["result"][1]]
    return sum(math.isfinite(float(v)) for v in values)


def raw_totals(mesh: LocalMesh, expr: str, at: float) -> dict[str, list]:
    """What each metric in `expr` holds at `at`, summed: what an empty panel lacked."""
    names = sorted(set(re.findall(r"\b(?:kvmesh|nv)_\w+", expr)))
    return {n: [s["value"][1] for s in query(mesh, f"sum({n})", at)["result"]] for n in names}


def test_every_panel_shows_data_under_load(mesh, tmp_path):
    wait_for(lambda: finite_series(query(mesh, 'count(up{job="kvmesh-worker"} == 1)', time.time())) == 1,
             timeout_s=30, what="both workers scraped")  # fmt: skip
    start, end = load(mesh)
    time.sleep(3 * INTERVAL_S)  # the last scrapes and rule evaluations
    empty = []
    for name, board in dashboards.dashboards().items():
        values = dashboards.variable_values(board, f"{round(end - start)}s", RATE_WINDOW)
        for target in dashboards.targets(board, name):
            expr = dashboards.substitute(target.expr, values)
            if not finite_series(query(mesh, expr, end)):
                empty.append(f"{name} / {target.panel} / {target.ref}: {expr}\n  {raw_totals(mesh, expr, end)}")
    assert not empty, "panels without data:\n" + "\n".join(empty)

    out = Path(os.environ.get("KVMESH_DOCS_IMAGES", tmp_path)) / "overview.png"
    overview = dashboards.load(dashboards.DASHBOARDS / "overview.json")
    panel_png.render(overview, mesh.prometheus, start, end, RATE_WINDOW, out)
    assert out.stat().st_size > 10_000
