"""One long-lived Router.Session stream to one router: Route requests wait for the answer that
names them; MarkPrefilled and Release are sent and forgotten, with the next Route when one comes
within BOOKKEEPING_DELAY_S. One writer task sends everything in order, what has queued meanwhile
as one message. When the stream breaks (or the router ends it), the Routes waiting fail as
SessionLost and `on_lost` is told, with the bookkeeping sent in the last REPLAY_WINDOW_S that the
router may not have applied: router_client.py sends both elsewhere."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

import grpc

from kvmesh.errors import AtCapacity, KvmeshError, Unavailable, from_status
from kvmesh.streams import coalesce
from kvmesh.v1 import router_pb2, router_pb2_grpc

log = logging.getLogger(__name__)
# A router applies bookkeeping within milliseconds (one pipelined Redis write); keepalive finds a
# hung one within ~2 s. What was sent longer ago than this was applied, or the lease frees it.
REPLAY_WINDOW_S = 5.0
# Bookkeeping waits this long for a Route to ride with (one message, one wake-up of the router
# instead of several); under load a Route comes sooner. The router's counts lag by at most this.
BOOKKEEPING_DELAY_S = 0.005


class SessionLost(Unavailable):
    """The session broke before its router answered: the Route may go to another router."""


class RouterSession:
    def __init__(
        self,
        stub: router_pb2_grpc.RouterStub,
        metadata: tuple[tuple[str, str], ...] = (),
        on_lost: Callable[[str, list[router_pb2.SessionRequest]], None] | None = None,
        on_settings: Callable[[router_pb2.RoutingSettings], None] | None = None,
    ):
        """`on_lost(reason, unsettled)`: called once when the stream fails, not on close().
        `on_settings`: given, the session first asks the router how it decides, and is told here."""
        self._outgoing: asyncio.Queue[router_pb2.SessionRequest] = asyncio.Queue()
        self._waiting: dict[str, asyncio.Future] = {}
        self._sent: deque[tuple[float, router_pb2.SessionRequest]] = deque()  # bookkeeping, for a replay
        self._on_lost = on_lost
        self._bookkeeping: list[router_pb2.SessionRequest] = []  # waiting for a Route or the delay
        self._flush_at: asyncio.TimerHandle | None = None
        self._on_settings = on_settings
        if on_settings is not None:
            self._outgoing.put_nowait(router_pb2.SessionRequest(settings=True))
        self._call = stub.Session(self._messages(), metadata=metadata)
        self._reader = asyncio.ensure_future(self._read())
        self.closed = False

    async def _messages(self):
        while True:
            yield coalesce(await self._outgoing.get(), self._outgoing, router_pb2.SessionRequest)

    async def _read(self) -> None:
        try:
            async for message in self._call:
                for answer in (message, *message.more):
                    if answer.HasField("settings") and self._on_settings is not None:
                        self._on_settings(answer.settings)
                        continue
                    future = self._waiting.pop(answer.request_id, None)
                    if future is None or future.done():
                        continue  # its caller gave up, or a message that only carries `more`
                    if answer.HasField("route"):
                        future.set_result(answer.route)
                    else:
                        future.set_exception(_route_error(answer.error))
            reason = "the router ended the session"
        except grpc.RpcError as e:
            reason = f"router session: {e.details() or e.code().name}"
        if self.closed:  # our own close()
            return
        self.closed = True
        if self._on_lost is not None:
            self._on_lost(reason, self._unsettled())
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(SessionLost(reason))
        self._waiting.clear()

    def _unsettled(self) -> list[router_pb2.SessionRequest]:
        since = time.monotonic() - REPLAY_WINDOW_S
        return [message for sent_at, message in self._sent if sent_at >= since]

    def send(self, message: router_pb2.SessionRequest) -> None:
        """Bookkeeping (MarkPrefilled, Release): sent in order, never waited for."""
        now = time.monotonic()
        while self._sent and self._sent[0][0] < now - REPLAY_WINDOW_S:
            self._sent.popleft()
        self._sent.append((now, message))
        self._bookkeeping.append(message)
        if self._flush_at is None:
            self._flush_at = asyncio.get_running_loop().call_later(BOOKKEEPING_DELAY_S, self._flush)

    def _flush(self) -> None:
        """The bookkeeping waiting goes out, ahead of anything sent after it."""
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        for message in self._bookkeeping:
            self._outgoing.put_nowait(message)
        self._bookkeeping.clear()

    async def route(self, request: router_pb2.RouteRequest, timeout_s: float) -> router_pb2.RouteResponse:
        if self.closed:  # broke after the caller took it
            raise SessionLost("router session: closed")
        future = asyncio.get_running_loop().create_future()
        self._waiting[request.request_id] = future
        self._flush()
        self._outgoing.put_nowait(router_pb2.SessionRequest(route=request))
        try:
            return await asyncio.wait_for(future, timeout_s)
        except (TimeoutError, asyncio.CancelledError) as e:
            # The router may still decide, and count the request on a worker nobody will use.
            self.send(router_pb2.SessionRequest(released=request.request_id))
            if isinstance(e, TimeoutError):
                raise Unavailable(f"the router did not answer within {timeout_s:g}s") from None
            raise
        finally:
            self._waiting.pop(request.request_id, None)

    async def drain(self, timeout_s: float = 2.0) -> None:
        """Waits (a bounded time) until the messages queued are handed to gRPC."""
        self._flush()
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not self._outgoing.empty() and not self.closed and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        self.closed = True
        if self._flush_at is not None:
            self._flush_at.cancel()
        self._call.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


def _route_error(error) -> KvmeshError:
    # The router is out of workers with room only when every candidate is at capacity.
    if error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]:
        return AtCapacity(error.message)
    return from_status(error.code, error.message)
