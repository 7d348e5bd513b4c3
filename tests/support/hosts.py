"""Hosts made of network namespaces, and the mesh's services started across them with the flags a
deployment on several machines uses: what tests/multihost/ and bench.multihost run.

`network()` makes one namespace per host (ctl, gw, w1, w2, client), each with loopback up and one
veth `eth0` holding its address in 10.213.47.0/24, whose peer sits in a switch namespace on one
bridge. Nothing is added to the root namespace: no traffic can leave, and the test process itself
cannot reach the hosts (clients run inside them, `Host.spawn`). `loopback()` is one namespace with
only loopback, where the same launcher puts every service on 127.0.0.1. Both are torn down whatever
happens (every process in them killed, then the namespaces deleted), and a run sweeps what a
killed earlier run left. Needs root.

The mesh runs as an exposed one does: API keys on (`--auth on`; on the hosts' addresses `auto`
would say so too, and the loopback mesh keeps the same flags), every service shown one random mesh
token and the gateway one admin key, both in the environment. Clients started in a host get the
admin key in theirs (`Mesh.client_env`) and show it (`headers`, kvmesh.auth.bearer).

    .venv/bin/python -m tests.support.hosts ready ...   (the readiness probe the launcher runs inside a host)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from kvmesh import models
from kvmesh.api_keys import PREFIX as KEY_PREFIX
from kvmesh.auth import ADMIN_KEY_ENV, MESH_TOKEN_ENV, bearer
from kvmesh.cli import rest_front
from kvmesh.cli.supervisor import http_ok
from kvmesh.tls import CA, MutualTls, blocking_channel, trusting
from kvmesh.v1 import router_pb2, router_pb2_grpc

PREFIX = "kvmt-"
SUBNET = "10.213.47"
ADDRESSES = {"ctl": f"{SUBNET}.2", "gw": f"{SUBNET}.3", "w1": f"{SUBNET}.11", "w2": f"{SUBNET}.12",
             "client": f"{SUBNET}.100"}  # fmt: skip
# Which run made a namespace, so that a sweep never deletes a live run's.
OWNERS = Path("/run/kvmt")
PORTS = {"http": 8080, "grpc": 8081, "rest": 8082, "router": 8090, "kvindex": 8091, "redis": 6379}
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Listening:
    address: str
    port: int
    process: str


@dataclass(frozen=True)
class Host:
    name: str
    netns: str
    address: str
    interface: str

    def argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]

    def spawn(self, argv: list[str], env: dict[str, str] | None, log: Path, cwd: Path = ROOT) -> subprocess.Popen:
        """`argv` inside this host, its output appended to `log`."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            return subprocess.Popen(self.argv(argv), stdout=out, stderr=subprocess.STDOUT,
                                    env={**os.environ, **(env or {})}, cwd=cwd)  # fmt: skip

    def run(
        self, argv: list[str], env: dict[str, str] | None = None, timeout_s: float = 120
    ) -> subprocess.CompletedProcess:
        """`argv` inside this host to its end; its output, as text."""
        return subprocess.run(self.argv(argv), capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, **(env or {})}, cwd=ROOT)  # fmt: skip

    def ss_listening(self) -> list[Listening]:
        out = _run(self.argv(["ss", "-ltnHp"])).stdout
        found = []
        for line in out.splitlines():
            local = line.split()[3]
            address, port = local.rsplit(":", 1)
            process = re.search(r'users:\(\("([^"]+)"', line)
            # gRPC binds an IPv4 address as ::ffff:<address>: the same address.
            address = address.strip("[]").split("%")[0].removeprefix("::ffff:")
            found.append(Listening(address, int(port), process[1] if process else "?"))
        return found

    def link(self, up: bool) -> None:
        _run(["ip", "-n", self.netns, "link", "set", self.interface, "up" if up else "down"])

    def rx_bytes(self) -> int:
        shown = json.loads(_run(["ip", "-n", self.netns, "-j", "-s", "link", "show", self.interface]).stdout)
        return shown[0]["stats64"]["rx"]["bytes"]


def _run(argv: list[str], timeout_s: float = 30) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done


def require_root() -> None:
    if os.geteuid() != 0:
        raise RuntimeError("the multi-host hosts are network namespaces: run as root (CI does)")


@contextlib.contextmanager
def _namespaces(names: list[str]) -> Iterator[tuple[str, list[str]]]:
    """(run id, namespace names) for `names`, created empty with loopback up; on exit every process
    in them is killed and they are deleted."""
    require_root()
    sweep()
    run = secrets.token_hex(3)
    OWNERS.mkdir(parents=True, exist_ok=True)
    (OWNERS / run).write_text(str(os.getpid()))
    made: list[str] = []
    try:
        for name in names:
            made.append(netns := f"{PREFIX}{run}-{name}")
            _run(["ip", "netns", "add", netns])
            _run(["ip", "-n", netns, "link", "set", "lo", "up"])
        yield run, made
    finally:
        _delete(made)
        (OWNERS / run).unlink(missing_ok=True)


def _delete(namespaces: list[str]) -> None:
    for netns in namespaces:
        for _ in range(50):  # bounded: a process may fork while we kill
            pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout.split()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            time.sleep(0.1)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)


def sweep() -> None:
    """Deletes the namespaces of runs whose process is gone (a run killed before its teardown)."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n")
    names = [line.split()[0] for line in listed if line.startswith(PREFIX)]
    for run in {n.removeprefix(PREFIX).split("-")[0] for n in names}:
        owner = OWNERS / run
        if owner.exists() and Path(f"/proc/{owner.read_text().strip()}").exists():
            continue
        _delete([n for n in names if n.startswith(f"{PREFIX}{run}-")])
        owner.unlink(missing_ok=True)


@contextlib.contextmanager
def network(names: tuple[str, ...] = tuple(ADDRESSES)) -> Iterator[dict[str, Host]]:
    """One host per name (ADDRESSES), on one bridge in a switch namespace of its own."""
    with _namespaces([*names, "sw"]) as (_, netns):
        switch = netns[-1]
        _run(["ip", "-n", switch, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", switch, "link", "set", "br0", "up"])
        hosts = {}
        for name, ns in zip(names, netns[:-1], strict=True):
            # Made in the switch namespace, its peer straight into the host's: never in the root one.
            _run(["ip", "-n", switch, "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", ns])
            _run(["ip", "-n", switch, "link", "set", name, "master", "br0", "up"])
            _run(["ip", "-n", ns, "addr", "add", f"{ADDRESSES[name]}/24", "dev", "eth0"])
            _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            hosts[name] = Host(name, ns, ADDRESSES[name], "eth0")
        yield hosts


@contextlib.contextmanager
def loopback() -> Iterator[Host]:
    """One namespace with only loopback: every service of a mesh on 127.0.0.1, as on one machine."""
    with _namespaces(["lo"]) as (_, netns):
        yield Host("lo", netns[0], "127.0.0.1", "lo")


@dataclass(frozen=True)
class Placement:
    """Which host runs what: Redis, kvindex and router on `ctl`, gateway and REST on `gw`, one
    worker per entry of `workers`, the clients on `client`."""

    ctl: Host
    gw: Host
    workers: tuple[Host, ...]
    client: Host

    @classmethod
    def apart(cls, hosts: dict[str, Host]) -> Placement:
        return cls(hosts["ctl"], hosts["gw"], (hosts["w1"], hosts["w2"]), hosts["client"])

    @classmethod
    def together(cls, host: Host, workers: int = 2) -> Placement:
        return cls(host, host, (host,) * workers, host)


@dataclass
class Mesh:
    placement: Placement
    log_dir: Path
    redis_password: str
    tls_dir: Path | None
    model: str = models.DEFAULT_MODEL
    # What the services show each other; the admin key, which the gateway keeps as the key "admin".
    mesh_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    admin_key: str = field(default_factory=lambda: KEY_PREFIX + secrets.token_urlsafe(32))
    processes: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    @property
    def http(self) -> str:
        scheme = "https" if self.tls_dir else "http"  # the gateway serves HTTPS with its certificate
        return f"{scheme}://{self.placement.gw.address}:{PORTS['http']}"

    @property
    def rest(self) -> str:
        scheme = "https" if self.tls_dir else "http"  # the REST front serves HTTPS with its certificate
        return f"{scheme}://{self.placement.gw.address}:{PORTS['rest']}"

    @property
    def grpc(self) -> str:
        return f"{self.placement.gw.address}:{PORTS['grpc']}"

    @property
    def router(self) -> str:
        return f"{self.placement.ctl.address}:{PORTS['router']}"

    @property
    def kvindex(self) -> str:
        return f"{self.placement.ctl.address}:{PORTS['kvindex']}"

    @property
    def redis_url(self) -> str:
        return f"redis://:{self.redis_password}@{self.placement.ctl.address}:{PORTS['redis']}/0"

    def tls(self, name: str) -> MutualTls | None:
        """`name`'s certificate, when the mesh runs mutual TLS."""
        return MutualTls.in_dir(self.tls_dir, name) if self.tls_dir else None

    def tls_flags(self, name: str) -> list[str]:
        tls = self.tls(name)
        return tls.flags() if tls else []

    @property
    def client_env(self) -> dict[str, str]:
        """The environment of a client started in a host (the readiness probe, test agents, load
        generators): the admin key, which it shows with `headers(admin_key())` or bearer()."""
        return {ADMIN_KEY_ENV: self.admin_key}

    def spawn(self, name: str, host: Host, argv: list[str], env: dict[str, str] | None = None) -> None:
        """One of the mesh's processes: Redis's URL and the mesh token in its environment, never on
        its command line (every local user reads those)."""
        env = {"REDIS_URL": self.redis_url, MESH_TOKEN_ENV: self.mesh_token, **(env or {})}
        self.processes.append((name, host.spawn(argv, env, self.log_dir / f"{name}.log")))

    def service(self, name: str, host: Host, args: list[str], env: dict[str, str] | None = None) -> None:
        module = name.split("-")[0]
        tls = self.tls_flags(module)
        argv = [sys.executable, "-m", f"services.{module}", "--host", host.address, "--auth", "on", *args, *tls]
        self.spawn(name, host, argv, env)

    def tails(self, lines: int = 30) -> str:
        out = []
        for name, _ in self.processes:
            text = (self.log_dir / f"{name}.log").read_text(errors="replace").splitlines()
            out.append(f"--- {name}.log ---\n" + "\n".join(text[-lines:]))
        return "\n".join(out)

    def wait_ready(self, urls: list[str], workers: int, timeout_s: float) -> None:
        """Polls from the client's host until every URL answers 200 and the router lists `workers`;
        raises with the logs' tails when a process dies or the deadline passes."""
        argv = [sys.executable, "-m", "tests.support.hosts", "ready", "--router", self.router, "--workers",
                str(workers), "--timeout", str(timeout_s), *(f"--url={u}" for u in urls)]  # fmt: skip
        if self.tls_dir:
            argv += ["--tls-dir", str(self.tls_dir)]
        probe = self.placement.client.spawn(argv, self.client_env, self.log_dir / "ready.log")
        try:
            while probe.poll() is None:
                dead = [f"{n} (exit {p.returncode})" for n, p in self.processes if p.poll() is not None]
                if dead:
                    raise RuntimeError(f"{', '.join(dead)} exited while the mesh started:\n{self.tails()}")
                time.sleep(0.5)
        finally:
            with contextlib.suppress(ProcessLookupError):
                probe.kill()
            probe.wait(10)
        if probe.returncode != 0:
            probe_log = (self.log_dir / "ready.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the mesh was not ready: {probe_log}\n{self.tails()}")

    def stop(self, timeout_s: float = 45) -> None:
        """SIGTERM newest first (a worker stops its Triton in order), then SIGKILL what is left."""
        for _, process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + timeout_s
        for _, process in reversed(self.processes):
            try:
                process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        self.processes.clear()


@contextlib.contextmanager
def mesh(
    placement: Placement,
    log_dir: Path,
    triton_models: tuple[str, ...],
    engine_args: dict | None = None,
    worker_args: tuple[str, ...] = (),
    router_args: tuple[str, ...] = (),
    worker_env: dict[str, str] | None = None,
    tls_dir: Path | None = None,
    timeout_s: float = 600,
) -> Iterator[Mesh]:
    """The mesh's services with the flags a deployment on several machines uses: Redis with a
    password, kvindex and router on ctl; the gateway and REST front on gw; one worker per
    `triton_models` entry on the placement's workers, each on its own core; every service bound
    to its host's address. Yields once the gateway, the REST front and the router see every worker."""
    assert len(triton_models) == len(placement.workers), "one Triton model per worker host"
    log_dir.mkdir(parents=True, exist_ok=True)
    for stale in log_dir.glob("*.log"):
        stale.unlink()
    running = Mesh(placement, log_dir, secrets.token_urlsafe(16), tls_dir)
    ctl, gw = placement.ctl, placement.gw
    try:
        # Spawned here, not by kvmesh.redis_server, which starts and pings it from this process's
        # namespace. The password in a file only its owner reads, as docs/deploy.md has it: never on
        # a command line, which every local user can read.
        config = log_dir / "redis.conf"
        config.touch(mode=0o600)
        config.write_text(f"requirepass {running.redis_password}\n")
        running.spawn("redis", ctl, ["redis-server", str(config), "--bind", ctl.address, "--port", str(PORTS["redis"]),
                                     "--save", "", "--appendonly", "no", "--dir", str(log_dir)])  # fmt: skip
        running.service("kvindex", ctl, ["--port", str(PORTS["kvindex"])])
        running.service("router", ctl, ["--port", str(PORTS["router"]), *router_args])
        reserved = json.dumps(sorted(PORTS.values()))
        cores = sorted(os.sched_getaffinity(0))
        for i, (host, triton_model) in enumerate(zip(placement.workers, triton_models, strict=True)):
            args = ["--model", running.model, "--triton-model", triton_model, "--engine-args",
                    json.dumps(engine_args or {}), "--cpus", str(cores[i % len(cores)]), "--reserved-ports", reserved,
                    *worker_args]  # fmt: skip
            running.service(f"worker-{i + 1}", host, args, worker_env)
        gateway_args = ["--http-port", str(PORTS["http"]), "--grpc-port", str(PORTS["grpc"]), "--router-address",
                        running.router, "--models", json.dumps([running.model])]  # fmt: skip
        running.service("gateway", gw, gateway_args, {ADMIN_KEY_ENV: running.admin_key})
        running.wait_ready([f"{running.http}/health"], len(triton_models), timeout_s)
        # Last, once the gRPC services it forwards to listen (as `kvmesh up` starts it).
        rest = rest_front.argv(f"{gw.address}:{PORTS['rest']}", running.grpc, running.router, running.kvindex,
                               tls=running.tls("rest"))  # fmt: skip
        running.spawn("rest", gw, rest)
        running.wait_ready([f"{running.rest}/healthz"], len(triton_models), 30)
        yield running
    finally:
        running.stop()


def channel(address: str, tls_dir: Path | None) -> grpc.Channel:
    """A client's channel, with the `client` certificate of `tls_dir` when there is one."""
    return blocking_channel(address, MutualTls.in_dir(tls_dir, "client") if tls_dir else None)


def admin_key() -> str:
    """In a client the launcher started in a host (Mesh.client_env): the mesh's admin key."""
    return os.environ[ADMIN_KEY_ENV]


def headers(key: str) -> dict[str, str]:
    """HTTP's way to show `key` (kvmesh.auth.bearer is gRPC's); none for no key."""
    return {"Authorization": f"Bearer {key}"} if key else {}


def verify(tls_dir: Path | None) -> ssl.SSLContext | bool:
    """httpx's verify= for the gateway's and the REST front's HTTPS: their CA. With API keys on
    they ask for no client certificate."""
    return trusting(tls_dir / f"{CA}.crt") if tls_dir else True


def _ready(args: argparse.Namespace) -> None:
    deadline = time.monotonic() + args.timeout
    pending = list(args.url)
    trust, metadata = verify(args.tls_dir), bearer(admin_key())
    with channel(args.router, args.tls_dir) as router_channel:
        router = router_pb2_grpc.RouterStub(router_channel)
        waiting = "the workers"
        while True:
            pending = [u for u in pending if not http_ok(u, trust)]
            if not pending:
                try:
                    listed = router.Workers(router_pb2.WorkersRequest(), timeout=3, metadata=metadata).workers
                    if len(listed) >= args.workers:
                        return
                    waiting = f"{args.workers} workers ({len(listed)} listed)"
                except grpc.RpcError as e:  # not up yet; or the key refused, which the message says
                    waiting = f"the router: {e.code().name} {e.details()}"
            if time.monotonic() > deadline:
                raise SystemExit(f"not ready after {args.timeout:.0f}s: waiting for {pending or waiting}")
            time.sleep(0.5)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="waits for a mesh to be ready, from inside a host")
    parser.add_argument("command", choices=["ready"])
    parser.add_argument("--url", action="append", default=[])
    parser.add_argument("--router", required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--timeout", type=float, required=True)
    parser.add_argument("--tls-dir", type=Path)
    _ready(parser.parse_args())
