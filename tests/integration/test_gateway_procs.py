"""A gateway of several processes (`--procs 2`, services/gateway/procs.py) on a `kvmesh up --engine
sim --gateway-procs 2` mesh: both processes answer on the one HTTP port, and a scrape of /metrics on
either counts the requests of both; a child SIGKILLed is started again while the parent serves on,
its counts kept; and a gateway of its own beside the mesh, on port 0, sent SIGTERM mid-stream,
finishes the streams of both processes, refuses new connections, exits 0 and removes its metrics
directory. Which process answered a request: the one holding the server end of its connection."""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kvmesh.cli.local_mesh import LocalMesh
from services.gateway.procs import METRICS_DIR_PREFIX
from tests.support import meshes
from tests.support.spawning import service
from tests.support.waiting import wait_for

PROMPT = [504, 3575, 282]
MAX_TOKENS = 150  # the sim engine's step is ~33 ms: a stream of ~5 s, which a SIGTERM lands in
READY = re.compile(r"gateway ready: http://127\.0\.0\.1:(\d+) \(OpenAI\), grpc 127\.0\.0\.1:(\d+)")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    args = ("--engine", "sim", "--gateway-procs", "2")
    with meshes.running(tmp_path_factory.mktemp("gateway-procs-logs"), args, workers=1) as mesh:
        wait_for(lambda: mesh.log("gateway").count("gateway ready") == 2, timeout_s=60, what="both gateway processes")
        yield mesh


def http_port(mesh: LocalMesh) -> int:
    return urlsplit(mesh.http).port


def owner(port: int, connection: http.client.HTTPConnection, candidates: list[psutil.Process]) -> int:
    """The pid of the process holding the server end of `connection` to `port`."""
    client_port = connection.sock.getsockname()[1]
    for process in candidates:
        for c in process.net_connections(kind="tcp"):
            if c.laddr.port == port and c.raddr and c.raddr.port == client_port:
                return process.pid
    raise AssertionError(f"no process of {[p.pid for p in candidates]} holds the connection from {client_port}")


def post(port: int, body: dict) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """A request on a new connection: the kernel picks the process it reaches."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    return connection, connection.getresponse()


def complete(mesh: LocalMesh, port: int, gateways: list[psutil.Process]) -> int:
    """One short completion; the pid that answered it."""
    connection, response = post(port, {"model": mesh.model, "prompt": PROMPT, "max_tokens": 2})
    try:
        assert response.status == 200, response.read()
        response.read()
        return owner(port, connection, gateways)
    finally:
        connection.close()


def scrape(port: int, gateways: list[psutil.Process]) -> tuple[int, float]:
    """The pid that answered a scrape, and the HTTP requests it counted."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
        pid = owner(port, connection, gateways)
    finally:
        connection.close()
    requests = sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "kvmesh_gateway_requests_total" and s.labels["front"] == "http"
    )
    return pid, requests


def test_both_processes_answer_on_one_port_and_a_scrape_of_either_counts_both(mesh):
    port, gateways = http_port(mesh), mesh.service_processes("gateway")
    assert len(gateways) == 2
    _, before = scrape(port, gateways)
    answered = [complete(mesh, port, gateways) for _ in range(6)]
    while len(set(answered)) < 2 and len(answered) < 40:
        answered.append(complete(mesh, port, gateways))
    assert set(answered) == {p.pid for p in gateways}, answered
    scrapes = [scrape(port, gateways) for _ in range(4)]
    while len({pid for pid, _ in scrapes}) < 2 and len(scrapes) < 40:
        scrapes.append(scrape(port, gateways))
    assert len({pid for pid, _ in scrapes}) == 2, scrapes
    assert {requests for _, requests in scrapes} == {before + len(answered)}


def test_a_child_killed_is_started_again_while_the_parent_serves_on_and_its_counts_stay(mesh):
    port = http_port(mesh)
    gateways = mesh.service_processes("gateway")
    (parent,) = [p for p in gateways if p.ppid() == mesh.process.pid]
    (child,) = [p for p in gateways if p.ppid() == parent.pid]
    _, before = scrape(port, gateways)
    child.kill()
    child.wait(10)
    assert {complete(mesh, port, [parent]) for _ in range(5)} == {parent.pid}

    def replaced() -> list[psutil.Process]:
        return [p for p in parent.children() if p.pid != child.pid and "services.gateway" in " ".join(p.cmdline())]

    wait_for(lambda: mesh.log("gateway").count("gateway ready") == 3, timeout_s=45, what="another child, serving")
    gateways = [parent, *replaced()]
    assert len(gateways) == 2
    answered = [complete(mesh, port, gateways) for _ in range(4)]
    while gateways[1].pid not in answered and len(answered) < 40:
        answered.append(complete(mesh, port, gateways))
    assert gateways[1].pid in answered, answered
    log = mesh.log("gateway")
    assert f"gateway process 2/2 (pid {child.pid}) exited with code -9; starting it again in 0.5s" in log, log[-3000:]
    assert scrape(port, gateways)[1] == before + 5 + len(answered)  # the dead child's counts too


@pytest.fixture
def gateway(mesh, tmp_path):
    """A gateway of 2 processes beside the mesh, both ports 0: (parent, its log, HTTP port) once both serve."""
    log = tmp_path / "gateway.log"
    process = service(mesh, log, "gateway", "--http-port", "0", "--grpc-port", "0", "--router-address", mesh.router,
                      "--models", json.dumps([mesh.model]), "--procs", "2", "--drain-timeout-s", "60")  # fmt: skip
    try:
        wait_for(lambda: process.poll() is not None or log.read_text().count("gateway ready") == 2, timeout_s=60,
                 what="both processes of the gateway")  # fmt: skip
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        ports = set(READY.findall(log.read_text()))
        assert len(ports) == 1, ports  # the child serves on the free ports the parent got
        yield process, log, int(ports.pop()[0])
    finally:
        process.kill()
        process.wait(10)


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_a_gateway_of_two_processes_sent_sigterm_finishes_the_streams_of_both_and_leaves_nothing(mesh, gateway):
    process, log, port = gateway
    parent = psutil.Process(process.pid)
    gateways = [parent, *parent.children()]
    (metrics_dir,) = Path(tempfile.gettempdir()).glob(f"{METRICS_DIR_PREFIX}{process.pid}-*")
    body = {"model": mesh.model, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "stream": True,
            "stream_options": {"include_usage": True}, "ignore_eos": True}  # fmt: skip
    streams: dict[int, list[tuple[http.client.HTTPConnection, http.client.HTTPResponse]]] = {}
    while len(streams) < 2 and sum(map(len, streams.values())) < 12:
        connection, response = post(port, body)
        assert response.status == 200 and response.readline().startswith(b"data: ")  # streaming
        streams.setdefault(owner(port, connection, gateways), []).append((connection, response))
    assert len(streams) == 2, "every stream reached one process"
    process.send_signal(signal.SIGTERM)
    wait_for(lambda: log.read_text().count("gateway draining") == 2, what="both processes draining")
    wait_for(lambda: refused(port), timeout_s=5, what="new connections refused")
    for connection, response in (s for per_process in streams.values() for s in per_process):
        events = [line for line in response.read().decode().splitlines() if line.startswith("data: {")]
        assert json.loads(events[-1].removeprefix("data: "))["usage"]["completion_tokens"] == MAX_TOKENS
        connection.close()
    assert process.wait(30) == 0, log.read_text(errors="replace")[-3000:]
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in gateways)
    assert log.read_text().count("gateway drained") == 2
    assert not metrics_dir.exists()
