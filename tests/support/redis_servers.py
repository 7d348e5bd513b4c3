"""Redis servers of a test's own, started with the options it asks for (a password, TLS); the
shared clean one is tests/conftest.py's redis_url."""

from __future__ import annotations

import pytest

from kvmesh.net import free_port
from kvmesh.redis_server import RedisServer


@pytest.fixture
def redis_with(tmp_path):
    """start(**RedisServer options) → a started server; all are stopped after the test."""
    started = []

    def start(**kwargs) -> RedisServer:
        started.append(RedisServer(free_port(), workdir=tmp_path, **kwargs).start())
        return started[-1]

    yield start
    for server in started:
        server.stop()
