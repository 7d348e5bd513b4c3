"""Start a private redis-server (Debian's) on loopback: the local default and the tests' Redis;
with a password, and with mutual TLS instead of plain TCP when given."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

import redis

from kvmesh import processes
from kvmesh.tls import MutualTls

PASSWORD_ENV = "KVMESH_REDIS_PASSWORD"  # the password of the Redis `kvmesh up` starts (default: a new one each time)


class RedisServer:
    def __init__(
        self,
        port: int,
        host: str = "127.0.0.1",
        workdir: Path | None = None,
        password: str | None = None,
        tls: MutualTls | None = None,
    ):
        if password is not None and any(c in password for c in "\r\n\0"):
            raise ValueError("the Redis password cannot contain a line break or a NUL (it goes into redis.conf)")
        self.host, self.port, self.password, self.tls = host, port, password, tls
        self.workdir = workdir
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """What every client is given: the password, and with TLS the CA that signed Redis's
        certificate; each client shows its own certificate (registry.connect's `tls`), never Redis's key."""
        credentials = f":{quote(self.password, safe='')}@" if self.password else ""
        if not self.tls:
            return f"redis://{credentials}{self.host}:{self.port}/0"
        return f"rediss://{credentials}{self.host}:{self.port}/0?{urlencode({'ssl_ca_certs': self.tls.ca})}"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed: apt-get install redis-server (scripts/setup.sh does)")
        # The first argument "-" reads the rest of the configuration from stdin: the password stays
        # off the command line, which any local user can read.
        argv = [binary, "-", "--bind", self.host, "--save", "", "--appendonly", "no"]
        if self.tls:
            argv += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls.cert),
                     "--tls-key-file", str(self.tls.key), "--tls-ca-cert-file", str(self.tls.ca),
                     "--tls-auth-clients", "yes"]  # fmt: skip
        else:
            argv += ["--port", str(self.port)]
        if self.workdir:
            argv += ["--dir", str(self.workdir)]
        config = f"requirepass {_quoted(self.password)}\n" if self.password else ""
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        assert self.process.stdin is not None
        self.process.stdin.write(config.encode())
        self.process.stdin.close()
        own = self.tls.redis_options() if self.tls else {}
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5, **own)
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


def masked(url: str) -> str:
    """A Redis URL fit to print: its password replaced by ****."""
    password = urlsplit(url).password
    return url.replace(f":{password}@", ":****@", 1) if password else url


def _quoted(value: str) -> str:
    """A string for redis.conf (no line break, RedisServer checks): double-quoted, its backslashes
    and quotes escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
