"""Function calls of one event-loop turn go as one pipeline to a real Redis; each caller gets its
own answer or error, and a library Redis lost is loaded again."""

import asyncio

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from kvmesh.redis_batch import Coalescer

LIBRARY = """#!lua name=batch_test
redis.register_function('batch_echo', function(keys, args)
  if args[1] == 'fail' then return redis.error_reply('refused ' .. keys[1]) end
  return redis.call('INCR', keys[1])
end)
"""


@pytest.fixture
async def client(redis_url):
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_one_turns_calls_share_one_pipeline_and_keep_their_own_answers(client, monkeypatch):
    await client.function_load(LIBRARY, replace=True)
    pipelines = []
    real = client.pipeline
    monkeypatch.setattr(client, "pipeline", lambda **kw: pipelines.append(kw) or real(**kw))
    calls = Coalescer(client, [LIBRARY])
    answers = await asyncio.gather(
        *(calls.fcall("batch_echo", (f"k{i % 2}",), "ok") for i in range(6)),
        calls.fcall("batch_echo", ("k9",), "fail"),
        return_exceptions=True,
    )
    assert len(pipelines) == 1 and pipelines[0] == {"transaction": False}
    assert sorted(answers[:6]) == [1, 1, 2, 2, 3, 3]
    assert isinstance(answers[6], ResponseError) and "refused k9" in str(answers[6])
    assert await calls.fcall("batch_echo", ("k0",), "ok") == 4  # a later turn: a pipeline of its own
    assert len(pipelines) == 2


async def test_a_library_redis_lost_is_loaded_again(client):
    calls = Coalescer(client, [LIBRARY])
    await client.function_flush()
    assert await asyncio.gather(*(calls.fcall("batch_echo", ("k",), "ok") for _ in range(3))) == [1, 2, 3]


async def test_an_unreachable_redis_fails_every_caller():
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    calls = Coalescer(dead, [LIBRARY])
    results = await asyncio.gather(*(calls.fcall("batch_echo", ("k",), "ok") for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) or "Connect" in type(r).__name__ for r in results), results
    await dead.aclose()
