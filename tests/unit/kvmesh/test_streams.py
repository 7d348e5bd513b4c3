"""coalesce: what is queued behind the first message goes with it, in order, and a queue's end
(None) is left for the next get."""

from __future__ import annotations

import asyncio

from kvmesh.streams import MOST_NESTED, coalesce
from kvmesh.v1 import router_pb2


def released(request_id: str) -> router_pb2.SessionRequest:
    return router_pb2.SessionRequest(released=request_id)


async def test_alone_it_is_sent_as_it_is():
    first = released("a")
    assert coalesce(first, asyncio.Queue(), router_pb2.SessionRequest) is first


async def test_what_is_queued_goes_nested_in_order_and_the_end_stays_queued():
    queue: asyncio.Queue = asyncio.Queue()
    for request_id in "bc":
        queue.put_nowait(released(request_id))
    queue.put_nowait(None)
    message = coalesce(released("a"), queue, router_pb2.SessionRequest)
    assert message.WhichOneof("kind") is None
    assert [m.released for m in message.more] == ["a", "b", "c"]
    assert queue.get_nowait() is None and queue.empty()


async def test_a_long_queue_goes_in_bounded_messages():
    queue: asyncio.Queue = asyncio.Queue()
    for n in range(MOST_NESTED + 5):
        queue.put_nowait(released(str(n)))
    message = coalesce(released("first"), queue, router_pb2.SessionRequest)
    assert len(message.more) == MOST_NESTED
    assert queue.qsize() == 6
