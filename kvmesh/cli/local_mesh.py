"""`kvmesh up` as a child process on free loopback ports: what the integration tests and the
benchmarks start, exactly as a user would. It picks its Redis's password (and with `tls_dir`,
mutual TLS everywhere) and its admin key, so that `redis_url` reaches that Redis, `tls` is a client
certificate and `admin_key` works wherever auth is on."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil

from kvmesh.api_keys import PREFIX
from kvmesh.auth import ADMIN_KEY_ENV, MESH_TOKEN_ENV, bearer
from kvmesh.cli.supervisor import http_ok
from kvmesh.models import DEFAULT_MODEL
from kvmesh.net import free_port, free_ports
from kvmesh.redis_server import PASSWORD_ENV, RedisServer
from kvmesh.tls import MutualTls, blocking_channel
from kvmesh.v1 import router_pb2, router_pb2_grpc


@dataclass
class LocalMesh:
    process: subprocess.Popen
    http: str
    grpc: str
    router: str
    kvindex: str
    rest: str
    planner: str
    redis_url: str
    log_dir: Path
    model: str = DEFAULT_MODEL
    tls: MutualTls | None = None  # the `client` certificate of the mesh's CA, when it runs mutual TLS
    admin_key: str = ""  # the mesh's admin key (it checks keys with --auth on)
    mesh_token: str = ""  # what its services show each other
    routers: tuple[str, ...] = ()  # every router's address, `router` first (`kvmesh up --routers`)
    prometheus: str | None = None  # "http://127.0.0.1:<port>" when started with --prometheus

    @classmethod
    def start(
        cls,
        log_dir: Path,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        ready_timeout_s: float = 600,
        tls_dir: Path | None = None,
        routers: int = 1,
    ) -> LocalMesh:
        names = ("http", "grpc", "rest", "kvindex", "planner", "redis", "prometheus")
        names = names if "--prometheus" in extra_args else names[:-1]
        ports = dict(zip(names, free_ports(len(names)), strict=True))
        ports["router"] = _free_run(routers, avoid=ports.values())
        log_dir.mkdir(parents=True, exist_ok=True)
        # The services append to their logs and benchmarks reuse their directories: what a caller
        # reads or counts in a log must be this mesh's alone.
        for stale in log_dir.glob("*.log"):
            stale.unlink()
        argv = [sys.executable, "-m", "kvmesh", "up", "--log-dir", str(log_dir), "--routers", str(routers), *extra_args]
        for name, port in ports.items():
            argv += [f"--{name}-port", str(port)]
        if tls_dir:
            argv += ["--tls-dir", str(tls_dir)]
        password = secrets.token_urlsafe(16)
        redis_tls = MutualTls.in_dir(tls_dir, "redis") if tls_dir else None
        redis = RedisServer(ports["redis"], password=password, tls=redis_tls)  # kvmesh up starts it; this names it
        child_env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"} | (env or {})  # its own Redis
        child_env[PASSWORD_ENV] = password
        child_env.setdefault(ADMIN_KEY_ENV, PREFIX + secrets.token_urlsafe(32))
        child_env.setdefault(MESH_TOKEN_ENV, secrets.token_urlsafe(32))
        with open(log_dir / "up.log", "wb") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=child_env)
        mesh = cls(
            process=process,
            # With the mesh's certificates the gateway serves HTTPS and asks for the client's (auth off).
            http=f"{'https' if tls_dir else 'http'}://127.0.0.1:{ports['http']}",
            grpc=f"127.0.0.1:{ports['grpc']}",
            router=f"127.0.0.1:{ports['router']}",
            kvindex=f"127.0.0.1:{ports['kvindex']}",
            rest=f"{'https' if tls_dir else 'http'}://127.0.0.1:{ports['rest']}",  # HTTPS with the mesh's certificates
            planner=f"127.0.0.1:{ports['planner']}",
            redis_url=redis.url,
            log_dir=log_dir,
            tls=MutualTls.in_dir(tls_dir, "client") if tls_dir else None,
            admin_key=child_env[ADMIN_KEY_ENV],
            mesh_token=child_env[MESH_TOKEN_ENV],
            routers=tuple(f"127.0.0.1:{ports['router'] + i}" for i in range(routers)),
            prometheus=f"http://127.0.0.1:{ports['prometheus']}" if "prometheus" in ports else None,
        )
        deadline = time.monotonic() + ready_timeout_s
        verify = mesh.http_verify()
        while not http_ok(f"{mesh.http}/health", verify) or not mesh._prometheus_ready():
            if process.poll() is not None or time.monotonic() > deadline:
                mesh.kill()
                raise RuntimeError(f"kvmesh up did not get ready:\n{mesh.log('up')}")
            time.sleep(0.5)
        return mesh

    def _prometheus_ready(self) -> bool:
        return self.prometheus is None or http_ok(f"{self.prometheus}/-/ready")

    def wait_for_workers(self, count: int, timeout_s: float = 600, gone: frozenset[str] = frozenset()) -> None:
        """`kvmesh up` is ready with its first worker; this waits until `count` are registered,
        not counting the ids in `gone` (killed workers stay listed until their lease runs out)."""
        deadline = time.monotonic() + timeout_s
        with self.channel(self.router) as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            while True:
                workers = stub.Workers(router_pb2.WorkersRequest(), timeout=5, metadata=bearer(self.admin_key)).workers
                if sum(w.record.id not in gone for w in workers) >= count:
                    return
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{count} workers did not register:\n{self.log('up')}")
                time.sleep(0.5)

    def http_verify(self) -> ssl.SSLContext | bool:
        """httpx's verify= for the gateway's HTTP port: under TLS, the mesh's CA and the `client`
        certificate to show it; a new context each call (httpcore sets its ALPN on the one it is given)."""
        return self.tls.client_ssl_context() if self.tls else True

    def channel(self, address: str) -> grpc.Channel:
        """A channel to one of the mesh's gRPC services, as the `client` when it runs mutual TLS."""
        return blocking_channel(address, self.tls)

    def service_processes(self, service: str) -> list[psutil.Process]:
        """The running processes of one service (`worker`, `router`, `kvindex`, `gateway`)."""
        found = []
        for p in psutil.Process(self.process.pid).children(recursive=True):
            try:
                if f"services.{service}" in " ".join(p.cmdline()):
                    found.append(p)
            except (psutil.ZombieProcess, psutil.NoSuchProcess):  # a child that died and its parent did not reap yet
                pass
        return found

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def worker_logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("worker-*.log")))

    def stop(self, timeout_s: float = 90) -> int:
        """Ctrl-C, as a user would; returns kvmesh up's exit code."""
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """kvmesh up and everything it started, at once. Its services run in their own process
        groups: killing kvmesh up alone would orphan them."""
        children = []
        with contextlib.suppress(psutil.NoSuchProcess):
            children = psutil.Process(self.process.pid).children(recursive=True)
        for process in [*children, self.process]:
            with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
                process.kill()


def _free_run(count: int, avoid: Collection[int]) -> int:
    """The first of `count` consecutive free ports (router i listens on --router-port + i)."""
    while True:
        first = free_port()
        with contextlib.ExitStack() as held:
            try:
                for port in range(first, first + count):
                    if port in avoid or port > 65535:
                        raise OSError(f"{port} is taken by the mesh")
                    held.enter_context(socket.socket()).bind(("127.0.0.1", port))
            except OSError:
                continue
        return first
