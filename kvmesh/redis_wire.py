"""One connection of our own to Redis for a hot path: a batch of commands written at once, their
replies read by hiredis's C parser, nothing else per command.

redis-py's asyncio client spends 130–200 µs of CPU on one command on this machine and ~28 µs a
command in a pipeline of 64 (pool checkout, retry wrapper, a timeout context per reply); a batch
over this wire costs a few µs a command. The connection's settings — TCP, TLS or a Unix socket,
credentials, database, timeouts — are those of a redis-py client's pool, so a URL means the same
here as anywhere else in kvmesh."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

DEFAULT_TIMEOUT_S = 5.0  # when the client's pool sets none: a hot path never waits forever


class _Replies(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = hiredis.Reader(replyError=ResponseError)
        self.transport: asyncio.Transport | None = None
        self.replies: list = []
        self.expected = 0
        self.done: asyncio.Future | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.parser.feed(data)
        while (reply := self.parser.gets()) is not False:
            self.replies.append(reply)
        if self.done is not None and len(self.replies) >= self.expected and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = RedisConnectionError(f"connection to Redis lost: {exc or 'closed by Redis'}")
        if self.done is not None and not self.done.done():
            self.done.set_exception(self.lost)


def _time_out(done: asyncio.Future, timeout_s: float) -> None:
    if not done.done():
        done.set_exception(RedisTimeoutError(f"Redis did not answer within {timeout_s} s"))


class RedisWire:
    def __init__(self, client: aioredis.Redis):
        """`client`: whose pool's settings say where and how to connect; it is not used otherwise."""
        self.settings = client.connection_pool.make_connection()  # never connected: only read
        self._replies: _Replies | None = None

    async def exchange(self, commands: Sequence[Sequence]) -> list:
        """Each command's reply, in order: a ResponseError instance for a command Redis refused;
        raises redis-py's ConnectionError / TimeoutError (and drops the connection) when the
        wire fails. One exchange at a time."""
        if self._replies is not None and (self._replies.lost is not None or self._replies.transport.is_closing()):
            self.close()  # Redis closed it while idle (a restart, its idle timeout): nothing was sent yet
        replies = self._replies or await self._connect()
        try:
            return await self._exchange(replies, commands)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._replies is not None and self._replies.transport is not None:
            self._replies.transport.close()
        self._replies = None

    async def _exchange(self, replies: _Replies, commands: Sequence[Sequence]) -> list:
        loop = asyncio.get_running_loop()
        replies.replies, replies.expected = [], len(commands)
        done = replies.done = loop.create_future()
        assert replies.transport is not None
        replies.transport.write(b"".join(hiredis.pack_command(tuple(c)) for c in commands))
        timeout_s = self.settings.socket_timeout or DEFAULT_TIMEOUT_S
        # A timer, not asyncio.wait_for: half the CPU, and this runs once a batch.
        timer = loop.call_later(timeout_s, _time_out, done, timeout_s)
        try:
            await done
        finally:
            timer.cancel()
        return replies.replies

    async def _connect(self) -> _Replies:
        s = self.settings
        loop = asyncio.get_running_loop()
        if getattr(s, "path", None):
            opening = loop.create_unix_connection(_Replies, s.path)
        else:
            tls = s.ssl_context.get() if hasattr(s, "ssl_context") else None
            opening = loop.create_connection(_Replies, s.host, s.port, ssl=tls)
        try:
            _, replies = await asyncio.wait_for(opening, s.socket_connect_timeout or DEFAULT_TIMEOUT_S)
        except (OSError, TimeoutError) as e:
            raise RedisConnectionError(f"cannot connect to Redis: {e or 'timed out'}") from e
        hello = []
        if s.password:
            hello.append(("AUTH", s.username, s.password) if s.username else ("AUTH", s.password))
        if s.db:
            hello.append(("SELECT", s.db))
        self._replies = replies
        for answer in await self.exchange(hello) if hello else []:
            if isinstance(answer, ResponseError):
                self.close()
                raise RedisConnectionError(f"Redis refused the connection's set-up: {answer}")
        return replies
