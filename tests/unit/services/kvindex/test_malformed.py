"""Malformed KV-event input is counted by reason and dropped: never a crash, never unbounded memory,
never a block claimed that the worker may not hold (real ZMQ sockets, real redis-server)."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import REGISTRY

from kvmesh.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, EventBatch, decode_batch
from services.kvindex import subscription, translate
from tests.unit.services.kvindex.test_events import LIMITS, MODEL, SEQ, TOKENS, index, message, stored, subscription_for

__all__ = ["index"]  # the fixture


def dropped(metric: str, reason: str) -> float:
    return REGISTRY.get_sample_value(f"kvmesh_kvindex_dropped_{metric}_total", {"reason": reason}) or 0.0


@pytest.fixture
async def sub(tmp_path, index):
    ctx, publisher, sub = await subscription_for(tmp_path, index, keep=1000)
    sub.publisher = publisher
    yield sub
    publisher.task.cancel()
    ctx.destroy(linger=0)


def store(block_size=8, hashes=(1,), tokens=TOKENS[:8]) -> BlockStored:
    return BlockStored(list(hashes), None, list(tokens), block_size, lora_id=None, medium="GPU", lora_name=None)


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (store(block_size=0), "block_size"),  # crashed the subscription: hashing's ValueError, a crash loop
        (store(block_size=-8), "block_size"),
        (store(block_size=LIMITS.max_block_size + 1), "block_size"),
        (store(hashes=[b"x" * 65]), "block_hash"),
        (store(tokens=[2**32] + TOKENS[1:8]), "token_ids"),
        (store(tokens=TOKENS[:7]), "token_ids"),
        (store(tokens=TOKENS[:9]), "token_ids"),
        (store(hashes=range(1001), tokens=[1] * 8008), "worker_full"),
    ],
)
async def test_a_malformed_store_is_counted_and_dropped_and_the_stream_goes_on(sub, index, event, reason):
    before = dropped("events", reason)
    limits = LIMITS if reason != "worker_full" else subscription.Limits(**{**vars(LIMITS), "max_batch_blocks": 2000})
    sub.limits = limits
    await sub.handle(message(0, event))
    await sub.handle(message(1, stored([2], TOKENS[:8])))
    assert dropped("events", reason) == before + 1
    assert await index.match(SEQ) == {"w": 1} and sub.stats.last_seq == 1


async def test_an_empty_store_is_nothing_not_a_crash(sub, index):
    await sub.handle(message(0, store(hashes=(), tokens=())), message(1, stored([2], TOKENS[:8])))
    assert await index.match(SEQ) == {"w": 1}


async def test_a_sequence_number_from_far_ahead_is_dropped_without_a_replay(sub, index):
    """It asked the replay for 2**62 batches and built their list: a MemoryError, then a crash loop."""
    before = dropped("messages", "seq_jump")
    await sub.handle(message(0, stored([1], TOKENS[:8])))
    await sub.handle(message(2**62, BlockRemoved([1], medium="GPU")))
    await sub.handle(message(1, stored([2], TOKENS[8:16], parent=1)))
    assert dropped("messages", "seq_jump") == before + 1 and sub.publisher.requests == []
    assert sub.stats.last_seq == 1 and await index.match(SEQ) == {"w": 2}


async def test_a_sequence_number_above_2_63_is_out_of_range(sub, index):
    before = dropped("messages", "seq_range")
    await sub.handle(message(0, stored([1], TOKENS[:8])), message(2**64 - 5, BlockRemoved([1], medium="GPU")))
    assert dropped("messages", "seq_range") == before + 1 and sub.stats.last_seq == 0
    assert await index.match(SEQ) == {"w": 1}


async def test_a_jump_the_next_message_confirms_is_a_loss_not_a_replay(sub, index):
    before = dropped("messages", "seq_jump")
    await sub.handle(message(0, stored([1], TOKENS[:8])))
    far = 1 + LIMITS.max_seq_gap + 1
    await sub.handle(message(far, stored([5], TOKENS[8:16], parent=1)), message(far + 1, stored([6], TOKENS[:8])))
    assert sub.stats.last_seq == far + 1 and sub.publisher.requests == []
    assert dropped("messages", "seq_jump") == before + 1  # the first of the two
    assert await index.match(SEQ) == {"w": 1} and len(sub.blocks) == 1  # block 1 forgotten, block 6 kept


async def test_a_publisher_far_behind_is_believed_once_the_next_message_follows(sub, index):
    """A restarted publisher whose first batches were lost: it was skipped as a duplicate, forever."""
    await sub.handle(message(0, stored([1], TOKENS[:8])))
    sub.stats.last_seq = 5 * LIMITS.max_seq_gap
    await sub.handle(message(3, BlockRemoved([1], medium="GPU")), message(4, stored([7], TOKENS[:8])))
    assert sub.stats.last_seq == 4 and await index.match(SEQ) == {"w": 1} and len(sub.blocks) == 1


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xc1 not msgpack", "undecodable"),
        (message(0, BlockRemoved(list(range(LIMITS.max_batch_blocks + 1)), medium="GPU"))[2], "oversize"),
    ],
    ids=["undecodable", "oversize"],
)
async def test_an_unusable_batch_is_lost_content_so_the_workers_blocks_go(sub, index, payload, reason):
    """It was skipped, and whatever it removed stayed claimed."""
    before = dropped("messages", reason)
    await sub.handle(message(0, stored([1], TOKENS[:8])))
    await sub.handle([b"kv", (1).to_bytes(8, "big"), payload])
    assert dropped("messages", reason) == before + 1
    assert await index.match(SEQ) == {} and len(sub.blocks) == 0 and sub.stats.last_seq == 1
    await sub.handle(message(2, stored([3], TOKENS[:8])))
    assert await index.match(SEQ) == {"w": 1}


async def test_a_stream_of_unusable_batches_scans_redis_once(sub, index, monkeypatch):
    purges = []
    purge = index.purge
    monkeypatch.setattr(index, "purge", lambda w: purges.append(w) or purge(w))
    await sub.handle(message(0, stored([1], TOKENS[:8])))
    await sub.handle(*([b"kv", seq.to_bytes(8, "big"), b"\xc1"] for seq in range(1, 50)))
    assert purges == ["w"] and await index.match(SEQ) == {}


async def test_a_stream_of_all_blocks_cleared_scans_redis_once(sub, index, monkeypatch):
    purges = []
    purge = index.purge
    monkeypatch.setattr(index, "purge", lambda w: purges.append(w) or purge(w))
    await sub.handle(message(0, stored([1], TOKENS[:8])))
    await sub.handle(*(message(seq, AllBlocksCleared()) for seq in range(1, 50)))
    assert purges == ["w"] and await index.match(SEQ) == {}


async def test_all_blocks_cleared_purges_what_a_hash_stored_twice_left_in_the_index(sub, index):
    """The worker's map keeps one of the two blocks, so it is empty while the index is not."""
    await sub.handle(message(0, stored([1], TOKENS[:8]), stored([1], TOKENS[8:16])))
    await sub.handle(message(1, BlockRemoved([1], medium="GPU")), message(2, AllBlocksCleared()))
    assert len(sub.blocks) == 0 and await index.match(SEQ) == {}


def test_token_ids_that_cannot_make_the_blocks_are_never_hashed(monkeypatch):
    """A 64-MiB message of one hash with block size 1 was ~13M hashes before it was dropped."""
    hashed = []
    monkeypatch.setattr(translate.hashing, "sequence_hashes", lambda *args, **kwargs: hashed.append(args) or [])
    blocks = translate.WorkerBlocks(MODEL, LIMITS.max_block_size, LIMITS.max_worker_blocks)
    out = blocks.translate(EventBatch(0, [store(block_size=1, tokens=[1] * 2**20)]))
    assert hashed == [] and out.malformed == {"token_ids": 1} and out.dropped == 1


def test_the_block_bound_counts_blocks_of_every_event():
    events = [BlockRemoved([1, 2], medium="GPU"), stored([3], TOKENS[:8])]
    assert len(decode_batch(message(0, *events)[2], max_blocks=3).events) == 2
    with pytest.raises(ValueError, match="3 blocks, at most 2"):
        decode_batch(message(0, *events)[2], max_blocks=2)


async def test_coalesced_batches_go_to_redis_in_calls_of_bounded_size(sub, index, monkeypatch):
    calls = []
    apply = index.apply
    monkeypatch.setattr(index, "apply", lambda w, runs: calls.append(sum(len(r.seqs) for r in runs)) or apply(w, runs))
    batches = [message(0, stored([1], TOKENS[:8]))]
    batches += [message(i, BlockRemoved([1], medium="GPU"), stored([1], TOKENS[:8])) for i in range(1, 40)]
    await sub.handle(*batches)
    assert max(calls) <= LIMITS.max_batch_blocks + 2 and sum(calls) == 79
    assert await index.match(SEQ) == {"w": 1}


async def test_catching_up_reads_at_most_max_seq_gap_batches(sub, index):
    parent = None
    for seq in range(LIMITS.max_seq_gap + 50):
        sub.publisher.record(message(seq, stored([seq], TOKENS[:8], parent=parent)))
        parent = seq
    await sub.catch_up()
    assert sub.stats.last_seq == LIMITS.max_seq_gap - 1 and sub.stats.batches == LIMITS.max_seq_gap


async def test_a_replay_message_over_the_size_limit_fails_the_replay(tmp_path, index, monkeypatch):
    monkeypatch.setattr(subscription, "REPLAY_TIMEOUT_S", 0.5)
    limits = subscription.Limits(**{**vars(LIMITS), "max_message_bytes": 4096})
    ctx, publisher, sub = await subscription_for(tmp_path, index, keep=10, limits=limits)
    publisher.record(message(0, stored([1], TOKENS[:8])))
    publisher.record(
        message(1, stored([2], TOKENS[8:16], parent=1), BlockRemoved(list(range(2**20, 2**20 + 900)), medium="GPU"))
    )
    await sub.catch_up()
    assert sub.stats.last_seq == 0  # the big one never arrived: ZMQ refused it
    publisher.task.cancel()
    ctx.destroy(linger=0)


async def test_a_broken_publisher_is_logged_once_per_reason(sub, caplog):
    with caplog.at_level(logging.WARNING, logger=subscription.__name__):
        await sub.handle([b"garbage"], [b"more", b"garbage"], message(2**63, BlockRemoved([1], medium="GPU")))
    assert [r.getMessage().split(": ", 1)[1] for r in caplog.records] == [
        "dropped a bad KV-event message: expected 3 frames (topic, seq, payload), got 1",
        "dropped a bad KV-event message: sequence number 9223372036854775808 is above 2**63 - 1",
    ]
