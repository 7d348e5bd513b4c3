"""Worker ids: one rule, enforced where an id is registered and wherever it could reach a Redis
pattern; a hostile id never reaches another worker's index keys (real redis-server)."""

from __future__ import annotations

import pytest

from kvmesh import worker_ids
from kvmesh.block_index import BlockIndex, BlockRun, reverse_key
from kvmesh.hashing import sequence_hashes
from kvmesh.registry import Registry
from kvmesh.v1 import worker_pb2

PROMPT = sequence_hashes(list(range(32)), block_size=8)  # 4 blocks
HOSTILE = ["a}:w:b", "b*", "*", "[ab]", "w?", "a b", "-w", ".w", "", "x" * 65, "w:1", "w{1}", "wé", "w\n"]


@pytest.fixture
async def index(client):
    index = BlockIndex(client)
    await index.load_functions()
    return index


def stored(seqs: list[int]) -> list[BlockRun]:
    return [BlockRun(True, seqs[0], seqs)]


@pytest.mark.parametrize("worker_id", ["w-1a2b3c", "W", "prefill-0", "w_1.2", "9" * 64])
def test_ordinary_ids_pass(worker_id):
    assert worker_ids.check(worker_id) == worker_id


@pytest.mark.parametrize("worker_id", HOSTILE)
def test_other_ids_are_refused_naming_the_id_and_the_rule(worker_id):
    with pytest.raises(ValueError) as refused:
        worker_ids.check(worker_id)
    assert repr(worker_id) in str(refused.value) and worker_ids.RULE in str(refused.value)


@pytest.mark.parametrize("worker_id", ["a}:w:b", "b*", ""])
async def test_the_registry_refuses_to_register_a_bad_id(client, worker_id):
    with pytest.raises(ValueError, match="refused"):
        await Registry(client).register(worker_pb2.WorkerRecord(id=worker_id, model="m"), lease_ms=5000)
    assert await client.keys("*") == []


@pytest.mark.parametrize("worker_id", HOSTILE)
async def test_purge_refuses_a_bad_id_before_any_pattern_is_built(index, worker_id):
    await index.apply("b", stored(PROMPT))
    with pytest.raises(ValueError, match="refused"):
        await index.purge(worker_id)
    assert await index.match(PROMPT) == {"b": 4}


async def test_a_hostile_id_in_the_index_cannot_be_reached_by_purging_another(index, client):
    """Ids written before the rule (or by hand): purging `b` must not match `a}:w:b`'s reverse
    keys, which a `{*}` root glob did, deleting them and leaving its blocks claimed forever."""
    await index.apply("a}:w:b", stored(PROMPT))
    await index.apply("b", stored(PROMPT[:2]))
    assert await index.purge("b") == 2
    assert await index.match(PROMPT) == {"a}:w:b": 4}
    assert await client.exists(reverse_key(PROMPT[0], "a}:w:b"))


async def test_purging_the_dead_goes_by_exact_keys_whatever_their_ids(index, client):
    await index.apply("a}:w:b", stored(PROMPT))
    await index.apply("b*", stored(PROMPT[:3]))
    await index.apply("b", stored(PROMPT[:2]))
    await index.apply("gone", stored(PROMPT[:1]))
    assert await index.purge_all_but({"b"}, batch=1) == {"a}:w:b": 4, "b*": 3, "gone": 1}
    assert await index.match(PROMPT) == {"b": 2}
    assert await client.keys("*:w:*") == [reverse_key(PROMPT[0], "b").encode()]
