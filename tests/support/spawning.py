"""Processes a test starts beside a mesh, their output in a log file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kvmesh import auth
from kvmesh.cli.local_mesh import LocalMesh


def spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`argv` with `env` over this process's environment, its stdout and stderr into `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})


def service(mesh: LocalMesh, log: Path, name: str, *args: str) -> subprocess.Popen:
    """Another process of services.<name> in `mesh` (its Redis, its mesh token), on loopback."""
    argv = [sys.executable, "-m", f"services.{name}", "--host", "127.0.0.1", *args]
    return spawn(argv, log, {"REDIS_URL": mesh.redis_url, auth.MESH_TOKEN_ENV: mesh.mesh_token})
