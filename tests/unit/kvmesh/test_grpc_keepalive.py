"""Keepalive (kvmesh.grpc_server.KEEPALIVE): a long-lived stream that carries nothing stays open
to a server started by serve() (which accepts the pings), and a peer that stops answering fails
the stream within a few seconds instead of never. The other way (SERVER_KEEPALIVE): a server
started by serve() ends the call of a client that stops answering its pings."""

import asyncio
import contextlib
import gc
import time

import grpc
import pytest

from kvmesh import grpc_server


async def bidi(requests, context):
    async for request in requests:
        yield request


HANDLERS = grpc.method_handlers_generic_handler("test.Keepalive", {"Bidi": grpc.stream_stream_rpc_method_handler(bidi)})


@pytest.fixture
async def server():
    served = await grpc_server.serve("test", "127.0.0.1", 0, lambda s: s.add_generic_rpc_handlers((HANDLERS,)))
    yield served
    await served.server.stop(None)
    gc.unfreeze()  # serve() froze the test session's heap


class Proxy:
    """Forwards TCP to a port until frozen; then holds every byte, as a hung or partitioned peer would."""

    def __init__(self, port: int):
        self.port = port
        self.frozen = asyncio.Event()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._connect, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _connect(self, reader, writer) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.port)
        await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))

    async def _pipe(self, reader, writer) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if self.frozen.is_set():
                    await asyncio.Event().wait()  # never forwards again
                writer.write(data)
                await writer.drain()


async def stream_of_nothing():
    await asyncio.Event().wait()
    yield b""


def stream(channel: grpc.aio.Channel) -> grpc.aio.StreamStreamCall:
    return channel.stream_stream("/test.Keepalive/Bidi")(stream_of_nothing())


async def ended_after(reading: asyncio.Future, timeout_s: float) -> float | None:
    """Seconds until the stream's read failed, None if it still waits after `timeout_s` (the read
    goes on: cancelling it would cancel the call)."""
    start = time.monotonic()
    done, _ = await asyncio.wait({reading}, timeout=timeout_s)
    if not done:
        return None
    assert isinstance(reading.exception(), grpc.RpcError), "the stream answered without being asked"
    return time.monotonic() - start


async def test_a_quiet_stream_stays_open_under_keepalive(server):
    async with grpc_server.channel(f"127.0.0.1:{server.port}", options=grpc_server.KEEPALIVE) as channel:
        call = stream(channel)
        # gRPC's default server answers the third ping with GOAWAY "too_many_pings".
        assert await ended_after(asyncio.ensure_future(call.read()), 6.0) is None
        call.cancel()


async def test_a_peer_that_stops_answering_fails_the_stream_within_3_s(server):
    proxy = Proxy(server.port)
    port = await proxy.start()
    async with grpc_server.channel(f"127.0.0.1:{port}", options=grpc_server.KEEPALIVE) as channel:
        reading = asyncio.ensure_future(stream(channel).read())
        assert await ended_after(reading, 1.5) is None
        proxy.frozen.set()
        elapsed = await ended_after(reading, 10.0)
        assert elapsed is not None and elapsed < 3.0
    proxy.server.close()


async def test_a_server_cuts_off_a_client_that_stops_answering(monkeypatch):
    """Without the server's own pings, a vanished client's quiet stream is held until TCP gives up (~2 h)."""
    monkeypatch.setattr(
        grpc_server,
        "SERVER_KEEPALIVE",
        (("grpc.keepalive_time_ms", 500), ("grpc.keepalive_timeout_ms", 1000), ("grpc.http2.ping_timeout_ms", 1000)),
    )
    started, ended = asyncio.Event(), asyncio.Event()

    async def held(requests, context):
        context.add_done_callback(lambda _: ended.set())
        started.set()
        async for request in requests:
            yield request

    handlers = grpc.method_handlers_generic_handler("test.Held", {"Held": grpc.stream_stream_rpc_method_handler(held)})
    served = await grpc_server.serve("test", "127.0.0.1", 0, lambda s: s.add_generic_rpc_handlers((handlers,)))
    proxy = Proxy(served.port)
    port = await proxy.start()
    try:
        # A channel with no keepalive of its own: only the server's pings can find the client gone.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.stream_stream("/test.Held/Held")(stream_of_nothing())
            await asyncio.wait_for(started.wait(), 5.0)
            await asyncio.sleep(1.5)  # pings answered meanwhile keep it open
            assert not ended.is_set()
            proxy.frozen.set()
            begun = time.monotonic()
            await asyncio.wait_for(ended.wait(), 10.0)
            assert time.monotonic() - begun < 3.0
            call.cancel()
    finally:
        proxy.server.close()
        await served.server.stop(None)
        gc.unfreeze()  # serve() froze the test session's heap
