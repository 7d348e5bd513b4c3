"""services/router/draining.py: a drain ends each open client stream as if its client had closed
its side, so that a Session-like handler answers what it has begun, sends its summary, and the
server stops long before its grace runs out (without it the stream is cancelled at the grace); and
a message costs no task of its own on the way."""

import asyncio
import gc

import grpc
import pytest

from kvmesh import grpc_server
from services.router.draining import Draining

GRACE_S = 10.0


class SessionLike:
    """Answers each message a while later, concurrently; once the client's side ends, the answers
    still owed, then a summary (what Router.Session does)."""

    def __init__(self) -> None:
        self.received = asyncio.Event()

    async def session(self, requests, context):
        answers: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def answer(request: bytes) -> None:
            await asyncio.sleep(0.3)
            answers.put_nowait(b"answer:" + request)

        async def read() -> None:
            pending = []
            async for request in requests:
                pending.append(asyncio.create_task(answer(request)))
                self.received.set()
            await asyncio.gather(*pending)
            answers.put_nowait(None)

        reader = asyncio.create_task(read())
        while (response := await answers.get()) is not None:
            yield response
        await reader
        yield b"summary"


async def count(requests, context):
    """How many messages came."""
    yield b"%d" % len([request async for request in requests])


@pytest.fixture
async def served():
    handler, draining = SessionLike(), Draining()
    rpcs = grpc.method_handlers_generic_handler(
        "test.Drain",
        {
            "Session": grpc.stream_stream_rpc_method_handler(handler.session),
            "Count": grpc.stream_stream_rpc_method_handler(count),
        },
    )
    served = await grpc_server.serve(
        "test", "127.0.0.1", 0, lambda server: server.add_generic_rpc_handlers((rpcs,)), interceptors=[draining]
    )
    yield served, handler, draining
    await served.server.stop(None)
    gc.unfreeze()  # serve() froze the test session's heap


async def test_a_drain_answers_what_an_open_stream_began_then_ends_it(served):
    served, handler, draining = served
    async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        call = channel.stream_stream("/test.Drain/Session")()
        await call.write(b"first")
        await handler.received.wait()
        loop = asyncio.get_running_loop()
        started = loop.time()
        drained = asyncio.create_task(grpc_server.drain(served, grace_s=GRACE_S, before_stop=draining.begin))
        assert [response async for response in call] == [b"answer:first", b"summary"]
        assert await call.code() == grpc.StatusCode.OK
        await drained
        assert loop.time() - started < GRACE_S / 4


async def test_streams_before_a_drain_are_untouched(served):
    served, _, _ = served
    async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        call = channel.stream_stream("/test.Drain/Session")()
        for request in (b"a", b"b"):
            await call.write(request)
        await call.done_writing()
        assert sorted([response async for response in call]) == [b"answer:a", b"answer:b", b"summary"]


async def test_a_message_costs_no_task(served):
    """Racing each read with the drain took a task a message, on the hot path of every request."""
    served, _, _ = served
    loop = asyncio.get_running_loop()
    created = 0

    def counting(loop, coro, **kwargs):
        nonlocal created
        created += 1
        return asyncio.Task(coro, loop=loop, **kwargs)

    async def count(messages: int) -> int:
        nonlocal created
        async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
            call = channel.stream_stream("/test.Drain/Count")()
            created = 0
            for n in range(messages):
                await call.write(b"%d" % n)
            await call.done_writing()
            assert [response async for response in call] == [b"%d" % messages]
            return created

    loop.set_task_factory(counting)
    try:
        few, many = await count(2), await count(200)
    finally:
        loop.set_task_factory(None)
    assert many == few
