"""The Redis functions of the block index, against a real redis-server."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from kvmesh.block_index import BlockIndex, BlockRun, block_key, block_keys, match_keys
from kvmesh.hashing import sequence_hashes


@pytest.fixture
async def index(redis_url):
    client = aioredis.Redis.from_url(redis_url)
    index = BlockIndex(client)
    await index.load_functions()
    yield index
    await client.aclose()


def stored(seqs: list[int], root: int | None = None) -> list[BlockRun]:
    return [BlockRun(True, seqs[0] if root is None else root, seqs)]


PROMPT = sequence_hashes(list(range(64)), block_size=8)  # 8 blocks


def test_match_keys_are_the_block_keys_of_the_prompts_root():
    seqs = [7, 0, 2**64 - 1, *PROMPT]
    assert match_keys(seqs) == [block_key(7, s).encode() for s in seqs]
    assert block_keys(7, []) == []


async def test_match_gives_each_workers_prefix_depth(index):
    await index.apply("a", stored(PROMPT[:5]))
    await index.apply("b", stored(PROMPT))
    await index.apply("c", stored(PROMPT[:2]) + stored([PROMPT[4]], root=PROMPT[0]))  # a hole at 2
    assert await index.match(PROMPT) == {"a": 5, "b": 8, "c": 2}


async def test_a_worker_without_the_first_block_has_no_overlap(index):
    await index.apply("a", stored(PROMPT)[1:])
    assert await index.match(PROMPT) == {}
    assert await index.match([]) == {}


async def test_removal_and_purge(index):
    await index.apply("a", stored(PROMPT))
    await index.apply("b", stored(PROMPT[:3]))
    assert await index.apply("a", [BlockRun(False, PROMPT[0], [PROMPT[3]])]) == 1
    assert await index.match(PROMPT) == {"a": 3, "b": 3}
    assert await index.purge("a") == 7
    assert await index.match(PROMPT) == {"b": 3}
    assert await index.purge("a") == 0
    # Nothing of a is left behind, and emptied block keys are gone.
    assert not await index.redis.keys("*:w:a")
    assert not await index.redis.exists(block_key(PROMPT[0], PROMPT[5]))


async def test_applying_twice_is_idempotent(index):
    assert await index.apply("a", stored(PROMPT[:2])) == 2
    assert await index.apply("a", stored(PROMPT[:2])) == 0
    assert await index.match(PROMPT) == {"a": 2}


async def test_functions_reload_after_redis_loses_them(index):
    await index.apply("a", stored(PROMPT[:2]))
    await index.redis.function_flush()
    assert await index.match(PROMPT) == {"a": 2}


async def test_one_batch_mixes_roots_and_kinds_in_order_and_skips_empty_runs(index):
    other = sequence_hashes(list(range(100, 132)), block_size=8)  # another prompt: another root
    batch = [*stored(PROMPT[:4]), *stored(other[:2]), BlockRun(False, PROMPT[0], [PROMPT[3]]),
             *stored(PROMPT[3:5], root=PROMPT[0]), BlockRun(False, other[0], [other[1]]),
             BlockRun(True, other[0], [])]  # fmt: skip
    assert await index.apply("a", batch) == 4 + 2 + 1 + 2 + 1
    assert await index.match(PROMPT) == {"a": 5}
    assert await index.match(other) == {"a": 1}
    assert await index.purge("a") == 6


async def test_a_run_longer_than_luas_unpack_limit(index):
    seqs = sequence_hashes(list(range(8 * 2500)), block_size=8)
    assert await index.apply("a", stored(seqs)) == 2500
    assert await index.match(seqs[:128]) == {"a": 128}
    assert await index.purge("a") == 2500
