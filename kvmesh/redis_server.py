"""Start a private redis-server (Debian's) on loopback: the local default and the tests' Redis."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from kvmesh import processes


class RedisServer:
    def __init__(self, port: int, host: str = "127.0.0.1", workdir: Path | None = None):
        self.host, self.port = host, port
        self.url = f"redis://{host}:{port}/0"
        self.workdir = workdir
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed: apt-get install redis-server (scripts/setup.sh does)")
        argv = [binary, "--bind", self.host, "--port", str(self.port), "--save", "", "--appendonly", "no"]
        if self.workdir:
            argv += ["--dir", str(self.workdir)]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host=self.host, port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process:
            processes.terminate(self.process, 10)
