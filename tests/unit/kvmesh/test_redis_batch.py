"""Calls made while a batch is out leave together over one connection to a real Redis;
each caller gets its own answer or error, and a library Redis lost is loaded again."""

import asyncio

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from kvmesh.redis_batch import Coalescer

LIBRARY = """#!lua name=batch_test
redis.register_function('batch_echo', function(keys, args)
  if args[1] == 'fail' then return redis.error_reply('refused ' .. keys[1]) end
  return redis.call('INCR', keys[1])
end)
"""


def count_exchanges(calls: Coalescer, monkeypatch) -> list[int]:
    """The size of each batch sent."""
    sizes = []
    real = calls.wire.exchange

    async def exchange(commands):
        sizes.append(len(commands))
        return await real(commands)

    monkeypatch.setattr(calls.wire, "exchange", exchange)
    return sizes


async def test_calls_made_together_share_one_batch_and_keep_their_own_answers(client, monkeypatch):
    await client.function_load(LIBRARY, replace=True)
    calls = Coalescer(client, [LIBRARY])
    sizes = count_exchanges(calls, monkeypatch)
    answers = await asyncio.gather(
        *(calls.fcall("batch_echo", (f"k{i % 2}",), "ok") for i in range(6)),
        calls.fcall("batch_echo", ("k9",), "fail"),
        return_exceptions=True,
    )
    assert sizes == [7]
    assert sorted(answers[:6]) == [1, 1, 2, 2, 3, 3]
    assert isinstance(answers[6], ResponseError) and "refused k9" in str(answers[6])
    assert await calls.fcall("batch_echo", ("k0",), "ok") == 4  # later: a batch of its own
    assert sizes == [7, 1]


async def test_calls_made_while_a_batch_is_out_leave_together_after_it(client, monkeypatch):
    await client.function_load(LIBRARY, replace=True)
    calls = Coalescer(client, [LIBRARY])
    sizes = count_exchanges(calls, monkeypatch)
    first = asyncio.ensure_future(calls.fcall("batch_echo", ("k",), "ok"))
    await asyncio.sleep(0)  # the first batch is out
    later = [asyncio.ensure_future(calls.fcall("batch_echo", ("k",), "ok")) for _ in range(5)]
    for _ in range(3):
        await asyncio.sleep(0)
    assert await asyncio.gather(first, *later) == [1, 2, 3, 4, 5, 6]  # in the order they were made
    assert sizes == [1, 5]


async def test_a_library_redis_lost_is_loaded_again(client):
    calls = Coalescer(client, [LIBRARY])
    await client.function_flush()
    assert await asyncio.gather(*(calls.fcall("batch_echo", ("k",), "ok") for _ in range(3))) == [1, 2, 3]


async def test_an_unreachable_redis_fails_every_caller():
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    calls = Coalescer(dead, [LIBRARY])
    results = await asyncio.gather(*(calls.fcall("batch_echo", ("k",), "ok") for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, RedisConnectionError) for r in results), results
    await dead.aclose()


async def test_a_callers_several_commands_ride_with_the_others_and_come_back_as_its_list(client, monkeypatch):
    await client.function_load(LIBRARY, replace=True)
    calls = Coalescer(client, [LIBRARY])
    sizes = count_exchanges(calls, monkeypatch)
    read, alone, refused = await asyncio.gather(
        calls.execute([("SET", "s", "v"), ("GET", "s"), ("FCALL", "batch_echo", 1, "k", "ok")]),
        calls.fcall("batch_echo", ("k",), "ok"),
        calls.execute([("GET", "s"), ("FCALL", "batch_echo", 1, "k9", "fail")]),
        return_exceptions=True,
    )
    assert sizes == [6]
    assert read == [b"OK", b"v", 1] and alone == 2
    assert isinstance(refused, ResponseError) and "refused k9" in str(refused)  # its own error only


async def test_after_redis_lost_its_functions_only_the_refused_callers_go_again(client, monkeypatch):
    """A write that ran must not run twice because a function call beside it was refused."""
    calls = Coalescer(client, [LIBRARY])
    await client.function_flush()
    sizes = count_exchanges(calls, monkeypatch)
    written, called = await asyncio.gather(calls.execute([("INCR", "plain")]), calls.fcall("batch_echo", ("k",), "ok"))
    assert written == [1] and called == 1
    assert sizes == [2, 1] and await client.get("plain") == b"1"


async def test_no_commands_is_an_answer_at_once(client, monkeypatch):
    calls = Coalescer(client, [LIBRARY])
    sizes = count_exchanges(calls, monkeypatch)
    assert await calls.execute([]) == [] and sizes == []
