"""The gateway's Router.Session client against an in-process gRPC server: answers in any order
reach their own Route, a failed Route is its status' error, bookkeeping arrives in order, and a
broken stream fails the Routes waiting on it and is reopened for the next."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from kvmesh.errors import InvalidArgument, Unavailable
from kvmesh.v1 import router_pb2, router_pb2_grpc, worker_pb2
from services.gateway.router_client import RouterClient


class FakeRouter(router_pb2_grpc.RouterServicer):
    """Answers Routes in pairs, the second first, as one message; "bad" fails alone; "break" ends
    the stream with an error."""

    def __init__(self):
        self.bookkeeping: list[tuple[str, str]] = []
        self.routed: list[str] = []
        self.sessions = 0
        self.stream_messages = 0

    async def Session(self, requests, context):
        self.sessions += 1
        held = []
        async for received in requests:
            self.stream_messages += 1
            for message in (received, *received.more):
                kind = message.WhichOneof("kind")
                if kind is None:
                    continue  # only carries `more`
                if kind != "route":
                    self.bookkeeping.append((kind, getattr(message, kind)))
                    continue
                self.routed.append(message.route.request_id)
                if message.route.request_id == "break":
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "router going away")
                held.append(message.route)
                if len(held) < 2 and message.route.request_id != "bad":
                    continue
                yield router_pb2.SessionResponse(more=[answer(route) for route in reversed(held)])
                held = []


def answer(route: router_pb2.RouteRequest) -> router_pb2.SessionResponse:
    if route.request_id == "bad":
        error = router_pb2.RouteError(code=grpc.StatusCode.INVALID_ARGUMENT.value[0], message="model: required")
        return router_pb2.SessionResponse(request_id=route.request_id, error=error)
    worker = worker_pb2.WorkerRecord(id=f"worker-for-{route.request_id}")
    return router_pb2.SessionResponse(request_id=route.request_id, route=router_pb2.RouteResponse(worker=worker))


@pytest.fixture
async def router():
    server = grpc.aio.server()
    fake = FakeRouter()
    router_pb2_grpc.add_RouterServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client = RouterClient(f"127.0.0.1:{port}")
    yield fake, client
    await client.close()
    await server.stop(0)


def route(client: RouterClient, request_id: str):
    return client.route("m", request_id, 4, [], 0, {"traceparent": "00-ab-cd-01"})


def route_pair(client: RouterClient, first: str, second: str):
    return asyncio.gather(route(client, first), route(client, second))


async def test_answers_out_of_order_reach_their_own_routes(router):
    _, client = router
    first, second = await route_pair(client, "r1", "r2")
    assert (first.worker.id, second.worker.id) == ("worker-for-r1", "worker-for-r2")


async def test_a_failed_route_is_the_error_of_its_status(router):
    _, client = router
    with pytest.raises(InvalidArgument, match="model: required"):
        await route(client, "bad")


async def test_bookkeeping_arrives_in_order_on_the_same_stream(router):
    fake, client = router
    client.mark_prefilled("r1")
    client.release("r1")
    client.release("r2")
    await route_pair(client, "r3", "r4")  # after the bookkeeping, on one stream
    assert fake.bookkeeping == [("prefilled", "r1"), ("released", "r1"), ("released", "r2")]
    assert fake.sessions == 1


async def test_what_queues_while_the_stream_is_busy_goes_as_one_message(router):
    fake, client = router
    await route_pair(client, "r1", "r2")  # the stream is open
    sent = fake.stream_messages
    for n in range(20):
        client.release(f"r{n}")
    await route_pair(client, "r3", "r4")
    assert fake.bookkeeping == [("released", f"r{n}") for n in range(20)]
    assert fake.stream_messages - sent < 20  # the writer found most of them queued together


async def test_a_broken_stream_fails_its_waiting_routes_and_the_next_route_opens_another(router):
    fake, client = router
    waiting = asyncio.ensure_future(route(client, "r1"))  # held for a partner that never comes
    while "r1" not in fake.routed:
        await asyncio.sleep(0.01)
    with pytest.raises(Unavailable):
        await route(client, "break")
    with pytest.raises(Unavailable, match="router going away"):
        await waiting
    first, second = await route_pair(client, "r5", "r6")
    assert (first.worker.id, second.worker.id) == ("worker-for-r5", "worker-for-r6")
    assert fake.sessions == 2


async def test_a_route_given_up_on_is_released(router):
    """The caller left (its client went away while it waited for a worker): the router may still
    decide and count the request, so it is told the request is over."""
    fake, client = router
    waiting = asyncio.ensure_future(route(client, "lonely"))  # held for a partner that never comes
    while "lonely" not in fake.routed:
        await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    with pytest.raises(InvalidArgument):  # answered at once; the release went out before it, on one stream
        await route(client, "bad")
    assert ("released", "lonely") in fake.bookkeeping
