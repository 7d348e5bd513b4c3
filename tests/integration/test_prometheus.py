"""`kvmesh up --prometheus`: a real Prometheus whose targets follow the registry. Every kind of
service is scraped; a worker that joins is scraped within a refresh and a scrape, and one that
stops leaves as soon."""

import signal
import time

import httpx
import pytest

from kvmesh.cli.local_mesh import LocalMesh
from tests.support.spawning import service
from tests.support.waiting import wait_for

INTERVAL_S = 1.0
ENGINE_ARGS = '{"max_model_len": 512, "timing": {"speedup": 1000}}'
KINDS = {"gateway", "router", "kvindex", "planner", "worker"}
# A new target shows up after the service discovery's next read (one interval), Prometheus' next
# look at the file (it watches it) and its first scrape (one interval); the rest is this test's polling
# and a loaded machine (3.7 s measured on an idle one; CI once took over 4).
WITHIN_S = 2 * INTERVAL_S + 4.0


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, sim_profile):
    args = ("--engine", "sim", "--engine-args", ENGINE_ARGS, "--disagg", "--planner", "--planner-profile",
            str(sim_profile), "--planner-args=--dry-run --interval-s 30", "--prometheus",
            "--prometheus-scrape-interval-s", str(INTERVAL_S))  # fmt: skip
    mesh = LocalMesh.start(tmp_path_factory.mktemp("prometheus-mesh-logs"), extra_args=args)
    mesh.wait_for_workers(2)
    yield mesh
    assert mesh.stop() == 0, mesh.log("up")


def targets(mesh: LocalMesh) -> list[dict]:
    reply = httpx.get(f"{mesh.prometheus}/api/v1/targets", params={"state": "active"}, timeout=5)
    return reply.json()["data"]["activeTargets"]


def up_by_id(mesh: LocalMesh) -> dict[str, dict]:
    return {t["labels"]["kvmesh_id"]: t for t in targets(mesh) if t["health"] == "up"}


def test_every_kind_of_service_is_scraped_with_the_agreed_labels(mesh):
    wait_for(
        lambda: (
            {t["labels"]["job"] for t in up_by_id(mesh).values()} == {f"kvmesh-{k}" for k in KINDS}
            and sum(t["labels"]["job"] == "kvmesh-worker" for t in up_by_id(mesh).values()) == 2
        ),
        timeout_s=30,
        what=f"every kind up in Prometheus (log: {mesh.log_dir}/prometheus-sd.log)",
    )
    found = up_by_id(mesh).values()
    workers = [t["labels"] for t in found if t["labels"]["job"] == "kvmesh-worker"]
    assert sorted(w["role"] for w in workers) == ["decode", "prefill"]
    assert all(w["worker"] == w["kvmesh_id"] and w["model"] == mesh.model for w in workers)
    for target in found:
        assert target["labels"]["instance"] == target["discoveredLabels"]["__address__"]
        assert target["labels"]["instance"].startswith("127.0.0.1:")
    # The router, for one, is scraped for kvmesh's own metrics.
    live = 'kvmesh_registry_live_workers{job="kvmesh-router"}'
    query = httpx.get(f"{mesh.prometheus}/api/v1/query", params={"query": live}, timeout=5)
    assert [r["value"][1] for r in query.json()["data"]["result"]] == ["2"]


def test_a_worker_that_joins_is_scraped_and_one_that_stops_leaves(mesh, tmp_path):
    before = set(up_by_id(mesh))
    worker = service(mesh, tmp_path / "worker.log", "worker", "--model", mesh.model, "--triton-model", "sim",
                     "--engine-args", ENGINE_ARGS, "--cpus", "0")  # fmt: skip
    try:
        mesh.wait_for_workers(3)
        registered = time.monotonic()
        wait_for(lambda: len(set(up_by_id(mesh)) - before) == 1, timeout_s=WITHIN_S, what="the new worker scraped")
        print(f"new worker up in Prometheus {time.monotonic() - registered:.1f}s after it registered")
        (joined,) = set(up_by_id(mesh)) - before
        assert up_by_id(mesh)[joined]["labels"]["role"] == "aggregated"
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0, (tmp_path / "worker.log").read_text()
    stopped = time.monotonic()
    wait_for(
        lambda: joined not in {t["labels"]["kvmesh_id"] for t in targets(mesh)},
        timeout_s=WITHIN_S,
        what="the stopped worker gone from Prometheus",
    )
    print(f"stopped worker gone from Prometheus {time.monotonic() - stopped:.1f}s after it exited")
