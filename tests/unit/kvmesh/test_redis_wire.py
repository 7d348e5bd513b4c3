"""The hot path's own Redis connection against real redis-servers: replies in order with Redis's
refusals as values; the URL's password, database and TLS honoured as redis-py honours them; a
Redis that goes away fails the exchange with redis-py's ConnectionError, and the next exchange
connects again."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from kvmesh import registry
from kvmesh.redis_wire import RedisWire
from kvmesh.tls import MutualTls
from tests.support.certs import ours_and_another_ca
from tests.support.redis_servers import redis_with

__all__ = ["redis_with"]  # the fixture


async def test_replies_come_in_order_and_a_refused_command_is_a_value(redis_url):
    wire = RedisWire(registry.connect(redis_url))
    replies = await wire.exchange([("SET", "a", "1"), ("INCRBY", "a", "x"), ("INCR", "a"), ("GET", "nothing")])
    assert replies[0] == b"OK" and isinstance(replies[1], ResponseError) and replies[2:] == [2, None]
    assert await wire.exchange([("GET", "a")]) == [b"2"]  # the same connection goes on
    wire.close()


async def test_the_urls_password_and_database_are_used(redis_with):
    server = redis_with(password="pw")
    wire = RedisWire(registry.connect(server.url.replace("/0", "/3")))
    assert await wire.exchange([("SET", "k", "v")]) == [b"OK"]
    assert redis.Redis(port=server.port, password="pw", db=3).get("k") == b"v"
    assert redis.Redis(port=server.port, password="pw", db=0).get("k") is None
    wrong = RedisWire(registry.connect(f"redis://:not-it@127.0.0.1:{server.port}/0"))
    with pytest.raises(RedisConnectionError, match="set-up"):
        await wrong.exchange([("PING",)])
    wire.close()


async def test_tls_with_the_clients_own_certificate(redis_with, tmp_path_factory):
    ours, theirs = ours_and_another_ca(tmp_path_factory)
    server = redis_with(password="pw", tls=MutualTls.in_dir(ours, "redis"))
    wire = RedisWire(registry.connect(server.url, tls=MutualTls.in_dir(ours, "client")))
    assert await wire.exchange([("PING",)]) == [b"PONG"]
    stranger = RedisWire(registry.connect(server.url, tls=MutualTls.in_dir(theirs, "client")))
    with pytest.raises(RedisConnectionError):
        await stranger.exchange([("PING",)])
    wire.close()


async def test_a_redis_that_goes_away_fails_the_exchange_and_the_next_one_connects_again(redis_with):
    server = redis_with()
    wire = RedisWire(registry.connect(server.url, timeout_s=1.0))
    assert await wire.exchange([("SET", "k", "1")]) == [b"OK"]
    server.stop()
    with pytest.raises(RedisConnectionError):
        await wire.exchange([("GET", "k")])
    server.start()
    assert await wire.exchange([("PING",)]) == [b"PONG"]
    wire.close()


async def test_a_redis_that_does_not_answer_times_out(redis_with):
    server = redis_with()
    wire = RedisWire(registry.connect(server.url, timeout_s=0.3))
    assert await wire.exchange([("PING",)]) == [b"PONG"]
    os.kill(server.process.pid, signal.SIGSTOP)  # hung, its socket open
    try:
        with pytest.raises(RedisTimeoutError, match="0.3 s"):
            await wire.exchange([("SET", "k", "1")])
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    assert await wire.exchange([("PING",)]) == [b"PONG"]  # a new connection, not the stuck one's replies
    wire.close()


async def test_a_connection_redis_closed_while_idle_is_replaced_before_the_next_exchange(redis_with):
    server = redis_with()
    wire = RedisWire(registry.connect(server.url, timeout_s=1.0))
    assert await wire.exchange([("CLIENT", "SETNAME", "hot-path")]) == [b"OK"]
    redis.Redis(port=server.port).client_kill_filter(skipme=False, _type="normal")  # as a restart or idle timeout would
    for _ in range(500):  # the wire hears it (the loop must run for that)
        if wire._replies.lost is not None:
            break
        await asyncio.sleep(0.01)
    assert wire._replies.lost is not None
    assert await wire.exchange([("PING",)]) == [b"PONG"]  # not the lost connection's error
    wire.close()
