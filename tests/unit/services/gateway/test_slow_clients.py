"""Write deadlines of streamed answers: a consumer that stops taking (gRPC) or a send that stops
returning (SSE) ends the request's chunks within the timeout; one that keeps up sees everything."""

import asyncio

import pytest
from prometheus_client import REGISTRY

from services.gateway.openai.sse_response import SseResponse
from services.gateway.slow_clients import SlowClient, taken_in_time
from tests.support.waiting import wait_until

TIMEOUT_S = 0.05


class Source:
    """A request's chunks: how many were taken, whether they were closed, and how often."""

    def __init__(self, n: int = 100, close_s: float = 0.0):
        self.n = n
        self.close_s = close_s
        self.taken = 0
        self.closed = 0

    async def items(self):
        try:
            for i in range(self.n):
                self.taken += 1
                yield f"data: {i}\n\n"
        finally:
            await asyncio.sleep(self.close_s)  # closing awaits something, as the engine's abort does
            self.closed += 1


def cut_count(front: str) -> float:
    return REGISTRY.get_sample_value("kvmesh_gateway_requests_total", {"front": front, "status": "slow_client"}) or 0


async def test_a_consumer_that_keeps_up_gets_every_item():
    source = Source(5)
    got = [item async for item in taken_in_time(source.items(), TIMEOUT_S, "grpc", "r")]
    assert len(got) == 5 and source.closed == 1


async def test_a_slow_but_steady_consumer_is_never_cut_off():
    """Each write within the timeout, all of them together well over it. Its own timeout, ten
    pauses long: a busy machine's scheduling delays must not make a pause look like a stop."""
    timeout_s, pause_s = 0.2, 0.02
    source, got = Source(30), []
    async for item in taken_in_time(source.items(), timeout_s, "grpc", "r"):
        got.append(item)
        await asyncio.sleep(pause_s)
    assert len(got) == 30


async def test_a_consumer_that_stops_taking_has_its_source_closed_then_an_error():
    source, before = Source(), cut_count("grpc")
    stream = taken_in_time(source.items(), TIMEOUT_S, "grpc", "r")
    await anext(stream)
    await wait_until(lambda: source.closed == 1)  # without waiting for the consumer to come back
    assert source.taken == 1 and cut_count("grpc") == before + 1
    with pytest.raises(SlowClient, match="read nothing for 0.05s"):
        await anext(stream)
    assert source.closed == 1


async def test_a_consumer_that_leaves_after_the_cut_closes_nothing_twice():
    source = Source(close_s=TIMEOUT_S)
    stream = taken_in_time(source.items(), TIMEOUT_S, "grpc", "r")
    await anext(stream)
    await asyncio.sleep(TIMEOUT_S * 1.5)  # the cut's task is closing the source
    assert source.closed == 0
    await stream.aclose()
    assert source.closed == 1


async def test_a_consumer_that_leaves_in_time_is_no_slow_client():
    source, before = Source(), cut_count("grpc")
    stream = taken_in_time(source.items(), TIMEOUT_S, "grpc", "r")
    await anext(stream)
    await stream.aclose()
    await asyncio.sleep(TIMEOUT_S * 2)
    assert source.closed == 1 and cut_count("grpc") == before


async def test_an_sse_send_that_blocks_ends_the_request_and_the_response():
    source, before = Source(), cut_count("http")
    sent: list[dict] = []

    async def send(message):
        if len(sent) == 3:  # the headers and two events went out; then the client stops reading
            await asyncio.Event().wait()
        sent.append(message)

    response = SseResponse(source.items(), "r", TIMEOUT_S, {})
    await asyncio.wait_for(response.stream_response(send), 1.0)
    assert source.closed == 1 and source.taken == 3 and cut_count("http") == before + 1
    assert all(m.get("more_body", True) for m in sent)  # never completed: uvicorn closes the connection


async def test_an_sse_client_that_reads_gets_every_event():
    source, sent = Source(3), []

    async def send(message):
        sent.append(message)

    await SseResponse(source.items(), "r", TIMEOUT_S, {"x-a": "b"}).stream_response(send)
    assert [m.get("body") for m in sent[1:]] == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n", b""]
    assert (b"x-a", b"b") in sent[0]["headers"] and sent[-1]["more_body"] is False and source.closed == 1
