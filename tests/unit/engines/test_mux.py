"""engines/mux.py with a fake Triton: one batch per turn of the loop, at most one in flight, a
failed batch fails its requests, idle and abandoned muxes end."""

import asyncio
import json

import pytest

from engines.mux import Mux, MuxHub, SharedEnd, member_is_cancelled, member_send, member_send_error
from kvmesh.engine_wire import EngineDelta, MuxDelta


class FakeStream:
    """The mux request's stream: records payloads; a send takes `delay` and may fail."""

    def __init__(self, delay=0.0, fail=False, cancelled=False):
        self.payloads: list = []
        self.finals = 0
        self.delay, self.fail, self.cancelled = delay, fail, cancelled

    async def send(self, payload: bytes, final: bool) -> None:
        await asyncio.sleep(self.delay)
        if self.fail:
            raise ConnectionError("stream gone")
        self.payloads.append(json.loads(payload))
        self.finals += final

    async def is_cancelled(self) -> bool:
        return self.cancelled


def delta(ids, finish=None):
    return EngineDelta(ids, finish, 7, 3)


async def test_deltas_of_one_loop_turn_go_out_as_one_batch():
    stream = FakeStream()
    mux = Mux("m", stream.send, stream.is_cancelled)
    sent = [mux.add(MuxDelta.of(f"r{i}", delta([i]))) for i in range(8)]
    await asyncio.gather(*sent)
    assert stream.payloads == [[[f"r{i}", [i], None, 7, 3, None] for i in range(8)]]


async def test_deltas_that_come_while_a_batch_is_in_flight_wait_for_it_and_go_together():
    stream = FakeStream(delay=0.05)
    mux = Mux("m", stream.send, stream.is_cancelled)
    first = mux.add(MuxDelta.of("r1", delta([1])))
    await asyncio.sleep(0.01)  # the first batch is in flight now
    later = [mux.add(MuxDelta.of("r2", delta([2]))), mux.add(MuxDelta.of("r3", delta([3])))]
    assert not first.done()
    await asyncio.gather(first, *later)
    assert [[d[0] for d in batch] for batch in stream.payloads] == [["r1"], ["r2", "r3"]]


async def test_a_failed_batch_fails_its_requests_and_breaks_the_mux():
    stream = FakeStream(fail=True)
    mux = Mux("m", stream.send, stream.is_cancelled)
    with pytest.raises(ConnectionError):
        await mux.add(MuxDelta.of("r1", delta([1])))
    assert mux.broken is not None
    with pytest.raises(ConnectionError):
        mux.add(MuxDelta.of("r2", delta([2])))


async def test_a_member_ends_its_own_stream_after_its_final_delta_and_leaves():
    stream, ended = FakeStream(), []
    mux = Mux("m", stream.send, stream.is_cancelled)

    async def end():
        ended.append(len(stream.payloads))  # how many batches were out when the request's own stream ended

    send = member_send(mux, "r1", end)
    assert mux.members == {"r1"}
    await send(delta([1]), False)
    await send(delta([2], "length"), True)
    assert ended == [2] and not mux.members


async def test_a_members_error_goes_in_the_batch_then_it_ends_and_leaves():
    stream, ended = FakeStream(), []
    mux = Mux("m", stream.send, stream.is_cancelled)

    async def end():
        ended.append(len(stream.payloads))

    await member_send_error(mux, "r1", end)("prompt too long")  # refused before it ran: never joined
    assert stream.payloads == [[["r1", "prompt too long"]]] and ended == [1] and not mux.members


async def test_requests_sent_as_one_end_it_once_the_last_of_them_ends():
    stream, ended = FakeStream(), []
    mux = Mux("m", stream.send, stream.is_cancelled)

    async def end():
        ended.append(len(stream.payloads))

    shared = SharedEnd(end, 3)
    sends = [member_send(mux, f"r{i}", shared.member()) for i in range(2)]
    refused = member_send_error(mux, "r2", shared.member())
    await asyncio.gather(sends[0](delta([1], "length"), True), refused("prompt too long"))
    assert ended == [] and mux.members == {"r1"}
    await sends[1](delta([2], "stop"), True)
    assert ended == [2] and not mux.members


async def test_a_member_ending_twice_counts_once():
    ended = []

    async def end():
        ended.append(True)

    shared = SharedEnd(end, 2)
    first = shared.member()
    await first()
    await first()
    assert ended == []
    await shared.member()()
    assert ended == [True]


async def test_a_member_whose_batch_fails_leaves_the_mux():
    stream = FakeStream(fail=True)
    mux = Mux("m", stream.send, stream.is_cancelled)
    send = member_send(mux, "r1", lambda: asyncio.sleep(0))
    with pytest.raises(ConnectionError):
        await send(delta([1]), False)
    assert not mux.members


async def test_the_hub_opens_with_an_empty_batch_and_ends_an_idle_mux():
    hub, stream = MuxHub(idle_close_s=0.05, check_s=0.02), FakeStream()
    await hub.open("m", stream.send, stream.is_cancelled)
    assert stream.payloads == [[]] and hub.get("m") is not None
    await asyncio.sleep(0.2)
    assert stream.payloads == [[], None] and stream.finals == 1
    assert hub.get("m") is None


async def test_the_hub_keeps_a_mux_with_requests_in_flight():
    hub, stream = MuxHub(idle_close_s=0.05, check_s=0.02), FakeStream()
    await hub.open("m", stream.send, stream.is_cancelled)
    hub.get("m").join("r1")
    await asyncio.sleep(0.2)
    assert hub.get("m") is not None and stream.finals == 0


async def test_a_cancel_reaches_only_the_request_it_names_and_only_while_in_flight():
    hub, stream = MuxHub(), FakeStream()
    await hub.open("m", stream.send, stream.is_cancelled)
    mux = hub.get("m")
    one, two = member_send(mux, "r1", lambda: asyncio.sleep(0)), member_send(mux, "r2", lambda: asyncio.sleep(0))
    hub.cancel("m", "r1")
    hub.cancel("m", "gone")  # finished already: nothing to remember
    hub.cancel("other-mux", "r2")
    assert await member_is_cancelled(mux, "r1")() and not await member_is_cancelled(mux, "r2")()
    await one(delta([1], "abort"), True)
    await two(delta([2], "length"), True)
    assert not mux.members and not mux.cancelled


async def test_when_the_mux_client_goes_away_its_requests_are_cancelled_then_the_mux_ends():
    hub, stream = MuxHub(idle_close_s=60, check_s=0.02), FakeStream(cancelled=True)
    await hub.open("m", stream.send, stream.is_cancelled)
    mux = hub.get("m")
    send = member_send(mux, "r1", lambda: asyncio.sleep(0))
    await asyncio.sleep(0.1)
    assert await member_is_cancelled(mux, "r1")() and "m" in hub.muxes  # r1 still in flight
    assert hub.get("m") is None, "no new request joins a mux whose client is gone"
    await send(delta([], "abort"), True)
    await asyncio.sleep(0.1)
    assert "m" not in hub.muxes


async def test_a_request_cancelled_while_its_batch_is_out_leaves_its_batch_mates_and_the_mux_working():
    stream = FakeStream(delay=0.05)
    mux = Mux("m", stream.send, stream.is_cancelled)
    waits = [asyncio.ensure_future(mux.add(MuxDelta.of(f"r{i}", delta([i])))) for i in range(3)]
    await asyncio.sleep(0.01)
    waits[0].cancel()  # its client went away
    await asyncio.gather(*waits[1:])
    await mux.add(MuxDelta.of("r1", delta([9])))
    assert [[d[0] for d in batch] for batch in stream.payloads] == [["r0", "r1", "r2"], ["r1"]]


async def test_a_second_mux_with_the_same_id_ends_at_once():
    hub, first, second = MuxHub(), FakeStream(), FakeStream()
    await hub.open("m", first.send, first.is_cancelled)
    await hub.open("m", second.send, second.is_cancelled)
    assert second.payloads == [None] and second.finals == 1
    assert hub.get("m") is not None and hub.get(None) is None and hub.get("other") is None
