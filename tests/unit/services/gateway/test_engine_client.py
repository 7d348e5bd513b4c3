"""The gateway's per-request inbox: deltas in the order they came, then the first error that
ended the request, raised to its reader."""

import pytest

from kvmesh.engine_wire import EngineDelta
from kvmesh.errors import Unavailable
from kvmesh.v1 import worker_pb2
from services.gateway.engine_client import EngineError, Inbox

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
