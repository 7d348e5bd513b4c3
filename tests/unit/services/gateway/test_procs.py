"""--procs N (services/gateway/procs.py) without a mesh: sockets sharing a port, the parent keeping
its children (trivial programs here) running and draining them, every process's metrics in one
scrape, a taken port refused, stale metrics directories removed."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import mark_process_dead
from prometheus_client.parser import text_string_to_metric_families

from kvmesh.cli.supervisor import Backoff
from kvmesh.settings import load
from services.gateway import procs
from services.gateway.config import GatewaySettings

# A stand-in child: notes its index, pid and arguments in the directory given, then waits; SIGTERM
# ends it with 0, unless IGNORE_TERM is set; CRASH makes it exit 3 at once.
CHILD = textwrap.dedent("""
    import os, signal, sys, time
    if os.environ.get("CRASH"):
        sys.exit(3)
    if os.environ.get("IGNORE_TERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    index = os.environ["KVMESH_GATEWAY_GROUP_INDEX"]
    (open(os.path.join(sys.argv[1], f"{index}-{os.getpid()}"), "w")).write(" ".join(sys.argv[2:]))
    while True:
        time.sleep(1)
""")
QUICK = Backoff(initial_s=0.1, cap_s=0.4, healthy_s=60)


def test_sockets_bound_with_reuse_port_share_one_port_which_a_plain_bind_is_refused():
    first = procs.bound("127.0.0.1", 0, reuse_port=True)
    first.listen()
    port = first.getsockname()[1]
    second = procs.bound("127.0.0.1", port, reuse_port=True)
    try:
        assert second.getsockname()[1] == port
        with pytest.raises(OSError):
            procs.bound("127.0.0.1", port, reuse_port=False)
    finally:
        first.close()
        second.close()


def test_procs_below_one_is_refused():
    with pytest.raises(SystemExit, match="procs"):
        load(GatewaySettings, ["--procs", "0"])


def test_a_parent_asked_for_a_port_already_listened_on_refuses_it_before_anything(monkeypatch):
    monkeypatch.delenv(procs.GROUP_ENV, raising=False)
    taken = procs.bound("127.0.0.1", 0, reuse_port=True)  # as another gateway's processes would
    taken.listen()
    try:
        settings = GatewaySettings(procs=2, http_port=taken.getsockname()[1], grpc_port=0)
        with pytest.raises(SystemExit, match=f"cannot listen on 127.0.0.1:{settings.http_port}"):
            procs.this_process(settings)
    finally:
        taken.close()
    assert procs.GROUP_ENV not in os.environ and procs.METRICS_DIR_ENV not in os.environ


def test_one_process_is_alone_as_before():
    process = procs.this_process(GatewaySettings())
    assert type(process) is procs.Process and process.label == ""
    assert process.http_sockets("127.0.0.1", 0) is None


def parent(tmp_path: Path, procs_n: int) -> tuple[procs.Parent, Path]:
    """A parent of `procs_n` whose children are CHILD, and the directory they note themselves in."""
    notes = tmp_path / "notes"
    notes.mkdir(exist_ok=True)
    command = [sys.executable, "-c", CHILD, str(notes)]
    return procs.Parent(procs_n, tmp_path, command=command, backoff=QUICK), notes


def started(notes: Path) -> list[tuple[int, int]]:
    """(index, pid) of every child started so far."""
    return sorted(tuple(map(int, p.name.split("-"))) for p in notes.iterdir())


async def until(condition, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "not within the time"
        await asyncio.sleep(0.05)


async def test_the_parent_starts_the_others_on_its_ports_restarts_one_killed_and_drains_them_all(tmp_path, caplog):
    caplog.set_level(logging.INFO, "kvmesh.gateway")
    group, notes = parent(tmp_path, 3)
    group.start_others(1234, 5678)
    await until(lambda: len(started(notes)) == 2)
    assert [index for index, _ in started(notes)] == [2, 3]
    assert {p.read_text() for p in notes.iterdir()} == {"--http-port 1234 --grpc-port 5678"}
    (_, killed), _ = started(notes)
    os.kill(killed, signal.SIGKILL)
    await until(lambda: len(started(notes)) == 3)
    assert [index for index, _ in started(notes)].count(2) == 2
    assert f"gateway process 2/3 (pid {killed}) exited with code -9; starting it again in 0.1s" in caplog.text
    await group.drain_others(timeout_s=5)
    assert all(child.poll() == 0 for child in group.children.values())
    assert len(re.findall(r"gateway process \d/3 \(pid \d+\) exited with code 0$", caplog.text, re.M)) == 2
    assert len(started(notes)) == 3  # none started again after the drain


async def test_a_child_that_keeps_crashing_is_started_again_after_a_growing_backoff(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("CRASH", "1")
    group, _ = parent(tmp_path, 2)
    group.start_others(1, 2)
    await until(lambda: caplog.text.count("exited with code 3") >= 4)
    await group.drain_others(timeout_s=1)
    delays = [float(d) for d in re.findall(r"exited with code 3; starting it again in ([\d.]+)s", caplog.text)]
    assert delays[:4] == [0.1, 0.2, 0.4, 0.4]


async def test_a_child_that_outlives_its_drain_is_killed(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("IGNORE_TERM", "1")
    monkeypatch.setattr(procs, "EXIT_GRACE_S", 0.2)
    group, notes = parent(tmp_path, 2)
    group.start_others(1, 2)
    await until(lambda: started(notes))
    await group.drain_others(timeout_s=0.3)
    assert group.children[2].poll() == -signal.SIGKILL
    assert "still runs after the drain: killed" in caplog.text


# One gateway process's metrics writes: the modules' gauges and counters, in multiprocess mode.
WRITER = textwrap.dedent("""
    import sys
    from kvmesh import registry, telemetry
    from services.gateway import metrics, router_endpoint
    workers, reachable = int(sys.argv[1]), int(sys.argv[2])
    router_endpoint.UP.labels("r1").set(reachable)
    metrics.IN_FLIGHT.inc()
    metrics.QUEUED.labels("0").inc()
    metrics.REQUESTS.labels("http", "200").inc(3)
    metrics.TTFT.observe(0.2)
    telemetry.RPC_IN_FLIGHT.labels("/kvmesh.v1.Inference/Generate").inc()
    registry.LIVE_WORKERS.set(workers)
    registry.REGISTRY_OK.set(reachable)
""")


def write_metrics(metrics_dir: Path, workers: int, reachable: int) -> int:
    """Runs one writer process; its pid."""
    env = {**os.environ, procs.METRICS_DIR_ENV: str(metrics_dir)}
    argv = [sys.executable, "-c", WRITER, str(workers), str(reachable)]
    with subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True) as writer:
        _, errors = writer.communicate(timeout=120)
    assert writer.returncode == 0, errors
    return writer.pid


async def scrape(metrics_dir: Path) -> dict[str, float]:
    async def app(scope, receive, send):  # what the gateway's own routes would answer
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    served = procs.AllProcessesMetrics(app, str(metrics_dir))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(served), base_url="http://gw") as client:
        assert (await client.get("/health")).status_code == 204
        text = (await client.get("/metrics")).text
    return {
        sample.name + str(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_a_scrape_sums_every_process_and_a_dead_ones_gauges_leave_but_its_counts_stay(tmp_path):
    first, second = write_metrics(tmp_path, workers=2, reachable=1), write_metrics(tmp_path, workers=3, reachable=0)
    # Every gauge these processes write says how processes combine (else one series per pid, forever).
    assert not list(tmp_path.glob("gauge_all_*"))
    both = await scrape(tmp_path)
    assert both["kvmesh_gateway_in_flight[]"] == 2
    assert both["kvmesh_gateway_queued[('priority', '0')]"] == 2
    assert both["kvmesh_rpc_in_flight[('method', '/kvmesh.v1.Inference/Generate')]"] == 2
    assert both["kvmesh_gateway_requests_total[('front', 'http'), ('status', '200')]"] == 6
    assert both["kvmesh_gateway_ttft_seconds_count[]"] == 2
    assert (both["kvmesh_registry_live_workers[]"], both["kvmesh_registry_reachable[]"]) == (3, 0)
    assert both["kvmesh_gateway_router_up[('router', 'r1')]"] == 0
    mark_process_dead(second, str(tmp_path))
    left = await scrape(tmp_path)
    assert left["kvmesh_gateway_in_flight[]"] == 1
    assert (left["kvmesh_registry_live_workers[]"], left["kvmesh_registry_reachable[]"]) == (2, 1)
    assert left["kvmesh_gateway_requests_total[('front', 'http'), ('status', '200')]"] == 6
    assert left["kvmesh_gateway_ttft_seconds_count[]"] == 2
    assert first != second  # else the second's files were the first's


def test_metrics_directories_of_parents_gone_are_removed_and_the_others_kept(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    gone = _dead_pid()
    stale, live = (tmp_path / f"{procs.METRICS_DIR_PREFIX}{pid}-x" for pid in (gone, os.getpid()))
    for path in (stale, live):
        path.mkdir()
        (path / "counter_1.db").write_bytes(b"")
    procs.remove_stale_metrics_dirs()
    assert not stale.exists() and live.exists()


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return process.pid
