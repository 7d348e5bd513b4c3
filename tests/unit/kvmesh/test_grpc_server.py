"""A KvmeshError raised by a handler ends the call with its code and message, for unary, server-
streaming and bidi-streaming handlers served by kvmesh.grpc_server.serve; other exceptions and
cancellation pass through the interceptor untouched."""

import asyncio
import gc

import grpc
import pytest
from prometheus_client import REGISTRY

from kvmesh import grpc_server
from kvmesh.errors import InvalidArgument, NotFound, Unavailable


async def unary(request: bytes, context) -> bytes:
    if request == b"bad":
        raise InvalidArgument("model: required", param="model")
    if request == b"boom":
        raise RuntimeError("not ours")
    return b"ok:" + request


async def server_stream(request: bytes, context):
    yield b"first"
    raise Unavailable("no live worker serves model 'm' right now")


async def bidi(requests, context):
    async for request in requests:
        if request == b"bad":
            raise NotFound("no such thing")
        yield b"echo:" + request


HANDLERS = grpc.method_handlers_generic_handler(
    "test.Errors",
    {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    },
)


@pytest.fixture
async def channel():
    served = await grpc_server.serve(
        "test", "127.0.0.1", 0, lambda server: server.add_generic_rpc_handlers((HANDLERS,))
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        yield channel
    await served.server.stop(None)
    gc.unfreeze()  # serve() froze the test session's heap


async def test_unary_answers_and_its_error_is_the_status(channel):
    call = channel.unary_unary("/test.Errors/Unary")
    assert await call(b"x") == b"ok:x"
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call(b"bad")
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failed.value.details() == "model: required"


async def test_telemetry_counts_the_status_the_error_became(channel):
    labels = {"method": "/test.Errors/Unary", "code": "INVALID_ARGUMENT"}
    before = REGISTRY.get_sample_value("kvmesh_rpc_requests_total", labels) or 0
    with pytest.raises(grpc.aio.AioRpcError):
        await channel.unary_unary("/test.Errors/Unary")(b"bad")
    assert REGISTRY.get_sample_value("kvmesh_rpc_requests_total", labels) == before + 1


async def test_server_stream_sends_what_it_had_then_the_status(channel):
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        async for message in channel.unary_stream("/test.Errors/ServerStream")(b""):
            received.append(message)
    assert received == [b"first"]
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert failed.value.details() == "no live worker serves model 'm' right now"


async def test_bidi_stream_ends_with_the_status_of_its_error(channel):
    call = channel.stream_stream("/test.Errors/Bidi")()
    await call.write(b"a")
    assert await call.read() == b"echo:a"
    await call.write(b"bad")
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call.read()
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND
    assert failed.value.details() == "no such thing"


async def test_other_exceptions_are_not_turned_into_a_kvmesh_status(channel):
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await channel.unary_unary("/test.Errors/Unary")(b"boom")
    assert failed.value.code() == grpc.StatusCode.UNKNOWN
    assert "Traceback" not in (failed.value.details() or "")


class RecordingContext:
    def __init__(self):
        self.aborted = False

    async def abort(self, code, details, trailing_metadata=()):
        self.aborted = True


@pytest.mark.parametrize("streaming", [False, True])
async def test_cancellation_is_never_swallowed(streaming):
    async def cancelled_call(request, context):
        raise asyncio.CancelledError

    async def cancelled_stream(request, context):
        yield b"first"
        raise asyncio.CancelledError

    context = RecordingContext()
    with pytest.raises(asyncio.CancelledError):
        if streaming:
            async for _ in grpc_server._aborting(cancelled_stream)(b"", context):
                pass
        else:
            await grpc_server._aborting(cancelled_call)(b"", context)
    assert not context.aborted
