"""The relay against a real publisher (the simulated engine's, which speaks vLLM's protocol) on
ipc://, read over TCP as kvindex reads it."""

from __future__ import annotations

import asyncio

import pytest
import zmq
import zmq.asyncio

from engines.kv_event_publisher import KvEventPublisher
from kvmesh import kv_events
from services.worker.kv_events_relay import Endpoints, KvEventsRelay


def _removed(block: int) -> list[kv_events.Event]:
    return [kv_events.BlockRemoved(block_hashes=[block], medium=None)]


@pytest.fixture
async def relayed(tmp_path):
    engine = Endpoints(f"ipc://{tmp_path}/kv.sock", f"ipc://{tmp_path}/kv-replay.sock")
    publisher = KvEventPublisher(engine.events, engine.replay)
    relay = KvEventsRelay(engine, "127.0.0.1", "127.0.0.1")
    relaying = asyncio.create_task(relay.run())
    yield publisher, relay
    relaying.cancel()
    await asyncio.gather(relaying, return_exceptions=True)
    publisher.close()


async def _fetch(ctx: zmq.asyncio.Context, endpoint: str, start: int) -> list[list[bytes]]:
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(endpoint)
    await dealer.send_multipart([b"", start.to_bytes(8, "big")])
    answers = []
    while (frames := await asyncio.wait_for(dealer.recv_multipart(), 5))[2] != kv_events.END_SEQ:
        answers.append(frames)
    dealer.close()
    return answers


async def test_live_events_and_replay_cross_on_tcp(relayed):
    publisher, relay = relayed
    assert relay.public.events.startswith("tcp://127.0.0.1:") and relay.public.replay.startswith("tcp://127.0.0.1:")
    ctx = zmq.asyncio.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(relay.public.events)
    publisher.publish(_removed(7))  # before anyone listens: only the replay has it
    # A subscription reaches the publisher through the relay a moment after connecting: publish
    # until one arrives rather than guess how long that takes.
    received = None
    for block in range(100, 200):
        publisher.publish(_removed(block))
        try:
            received = await asyncio.wait_for(sub.recv_multipart(), 0.05)
            break
        except TimeoutError:
            continue
    assert received is not None, "no live event crossed the relay"
    seq, batch = kv_events.decode(received)
    assert seq >= 1 and batch.events[0].block_hashes[0] >= 100
    replayed = await _fetch(ctx, relay.public.replay, 0)
    first_seq, first = kv_events.decode(replayed[0][1:])
    assert first_seq == 0 and first.events[0].block_hashes == [7]
    assert [int.from_bytes(f[2], "big") for f in replayed] == list(range(len(replayed)))
    sub.close()
    ctx.destroy()


async def test_a_malformed_replay_request_is_dropped_and_the_relay_keeps_answering(relayed):
    publisher, relay = relayed
    publisher.publish(_removed(1))
    ctx = zmq.asyncio.Context()
    bad = ctx.socket(zmq.DEALER)
    bad.setsockopt(zmq.LINGER, 0)
    bad.connect(relay.public.replay)
    await bad.send_multipart([b"", b"x", b"y"])  # four frames at the ROUTER
    answers = await _fetch(ctx, relay.public.replay, 0)
    assert [kv_events.decode(a[1:])[1].events[0].block_hashes for a in answers] == [[1]]
    bad.close()
    ctx.destroy()


async def test_the_endpoints_it_names_are_at_the_advertised_address(tmp_path):
    engine = Endpoints(f"ipc://{tmp_path}/kv.sock", f"ipc://{tmp_path}/kv-replay.sock")
    relay = KvEventsRelay(engine, "127.0.0.1", "10.213.47.11")
    relaying = asyncio.create_task(relay.run())
    assert relay.public.events.startswith("tcp://10.213.47.11:")
    assert relay.public.replay.startswith("tcp://10.213.47.11:")
    relaying.cancel()
    await asyncio.gather(relaying, return_exceptions=True)
