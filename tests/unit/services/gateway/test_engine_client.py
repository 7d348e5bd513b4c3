"""The gateway's per-request inbox: deltas in the order they came, then the first error that
ended the request, raised to its reader; and the pool failing the requests of a worker gone."""

import asyncio

import grpc
import pytest

from kvmesh.engine_wire import EngineDelta
from kvmesh.errors import Unavailable
from kvmesh.sampling import SamplingParams
from kvmesh.v1 import worker_pb2
from services.gateway.engine_client import EngineError, Inbox, TritonPool

WORKER = worker_pb2.WorkerRecord(id="w", triton_model="sim")


async def test_deltas_come_in_order_then_the_first_error():
    inbox = Inbox(WORKER)
    inbox.put(EngineDelta([1], None, 3, 0))
    inbox.put(EngineDelta([2], None, 3, 0))
    inbox.fail(Unavailable("mux gone"))
    inbox.engine_failed("too late")  # after the first error: never read
    assert [(await inbox.get()).token_ids for _ in range(2)] == [[1], [2]]
    with pytest.raises(Unavailable, match="mux gone"):
        await inbox.get()


@pytest.mark.parametrize(
    "message, error",
    [
        ("in 0: prompt too long", EngineError),
        ("Request for unknown model: 'sim' has no available versions", Unavailable),
    ],
)
async def test_an_engine_message_becomes_the_workers_error(message, error):
    inbox = Inbox(WORKER)
    inbox.engine_failed(message)
    with pytest.raises(error, match="worker w"):
        await inbox.get()


async def test_requests_on_a_worker_that_left_the_registry_fail_so_they_can_move():
    """A Triton that takes the stream and never answers (a host cut off): the request fails as
    soon as the registry no longer lists its worker, not when TCP gives up."""
    server, silent = grpc.aio.server(), _Silent()
    server.add_generic_rpc_handlers([silent])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    pool = TritonPool(mux=False)
    worker = worker_pb2.WorkerRecord(id="w1", triton_model="sim", triton_grpc_address=f"127.0.0.1:{port}")
    stream = pool.stream(worker, "r1", [1, 2, 3], SamplingParams(max_tokens=4), {})
    reading = asyncio.ensure_future(anext(stream))
    await asyncio.wait_for(silent.arrived.wait(), 5)
    pool.fail_workers_gone(["w1", "w2"])  # w1 is still in the registry
    await asyncio.sleep(0.1)  # what a failure would take to reach the reader: it does not come
    assert not reading.done()
    pool.fail_workers_gone(["w2"])
    with pytest.raises(Unavailable, match="w1 left the registry"):
        await asyncio.wait_for(reading, 5)
    await stream.aclose()
    await pool.close()
    await server.stop(0)


class _Silent(grpc.GenericRpcHandler):
    def __init__(self) -> None:
        self.arrived = asyncio.Event()

    def service(self, details):
        async def never_answer(requests, context):
            async for _ in requests:
                self.arrived.set()
                await asyncio.Event().wait()
            yield  # pragma: no cover - a stream handler

        return grpc.stream_stream_rpc_method_handler(never_answer)
