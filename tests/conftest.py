"""Fixtures every test tier shares: a real redis-server on a free loopback port, and the one mesh of
real engines that may run at a time (tests/integration and tests/multihost ask it for theirs)."""

from __future__ import annotations

import pytest
import redis

from kvmesh.net import free_port
from kvmesh.redis_server import RedisServer
from tests.support import meshes


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(free_port(), workdir=tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    """A clean database for each test."""
    redis.Redis.from_url(redis_server.url).flushall()
    return redis_server.url


@pytest.fixture(scope="session")
def real_meshes():
    one = meshes.OneAtATime()
    yield one
    one.stop()
