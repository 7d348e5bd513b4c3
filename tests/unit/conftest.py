"""Fixtures of the unit tier beside tests/conftest.py's real redis-server."""

import pytest
import redis.asyncio as aioredis


@pytest.fixture
async def client(redis_url):
    """An asyncio client of a clean database on the session's redis-server."""
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()
