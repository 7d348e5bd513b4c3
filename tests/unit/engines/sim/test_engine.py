"""The simulated engine: its KV block manager (prefix hits, LRU eviction, events) and its
scheduler (continuous batching, cached prefixes skip prefill, timing, abort)."""

from __future__ import annotations

import asyncio
import time

import pytest

from engines.request import BadRequest, EngineRequest
from engines.sim.block_manager import BlockManager, NoSpace
from engines.sim.engine import SimEngine
from engines.sim.timing import MIN_SLEEP_S, Pacer, Timing
from kvmesh import hashing
from kvmesh.kv_events import BlockRemoved, BlockStored
from kvmesh.sampling import SamplingParams


class Recorder:
    def __init__(self):
        self.events = []

    def __call__(self, events):
        self.events.extend(events)

    def stored(self):
        return [h for e in self.events if isinstance(e, BlockStored) for h in e.block_hashes]

    def removed(self):
        return [h for e in self.events if isinstance(e, BlockRemoved) for h in e.block_hashes]


def run_prompt(manager, prompt, max_tokens=1):
    seq = manager.admit(prompt, max_tokens)
    manager.fill(seq)
    manager.release(seq)
    return seq


def test_prefix_hits_and_stored_events_chain():
    events = Recorder()
    m = BlockManager(num_blocks=16, block_size=4, emit=events)
    prompt = list(range(10))  # 2 full blocks + 2 tokens
    first = run_prompt(m, prompt)
    assert first.cached_tokens == 0
    assert events.stored() == hashing.sequence_hashes(prompt, 4)
    stored = [e for e in events.events if isinstance(e, BlockStored)][0]
    assert stored.parent_block_hash is None and stored.token_ids == prompt[:8]
    second = run_prompt(m, prompt + [99, 98, 97])
    assert second.cached_tokens == 8
    new = [e for e in events.events if isinstance(e, BlockStored)][-1]
    assert new.parent_block_hash == hashing.sequence_hashes(prompt, 4)[1]


def test_a_fully_cached_prompt_recomputes_its_last_block():
    m = BlockManager(16, 4, Recorder())
    run_prompt(m, list(range(8)))
    assert run_prompt(m, list(range(8))).cached_tokens == 4


def test_lru_eviction_emits_removals_and_running_blocks_are_never_evicted():
    events = Recorder()
    m = BlockManager(num_blocks=4, block_size=4, emit=events)
    a = list(range(8))
    b = list(range(100, 108))
    run_prompt(m, a, max_tokens=0)  # 2 cached blocks
    running = m.admit(b, max_tokens=0)  # reserves 2
    m.fill(running)
    with pytest.raises(NoSpace):
        m.admit(list(range(200, 212)), max_tokens=0)  # needs 3: only a's 2 can go
    seq = m.admit(list(range(200, 208)), max_tokens=0)  # 2: evicts a's blocks, LRU first
    assert events.removed() == hashing.sequence_hashes(a, 4)
    m.fill(seq)
    assert m.free == 0 and m.cached == 4


def test_duplicate_blocks_computed_concurrently_are_shared():
    events = Recorder()
    m = BlockManager(8, 4, events)
    one, two = m.admit(list(range(8)), 0), m.admit(list(range(8)), 0)
    m.fill(one)
    m.fill(two)
    assert len(events.stored()) == 2 and m.cached == 2 and m.free == 6
    m.release(one)
    m.release(two)
    assert m.free == 6  # the 2 cached blocks are evictable, not free


def request(rid, prompt, max_tokens=4, stop_token_ids=()):
    return EngineRequest(rid, prompt, SamplingParams(max_tokens=max_tokens, stop_token_ids=list(stop_token_ids)))


@pytest.fixture
def engine():
    timing = Timing(base_ms=2.0, prefill_per_token_ms=0.02, speedup=1.0)
    e = SimEngine({"block_size": 16, "num_blocks": 256, "timing": timing.model_dump(), "max_num_batched_tokens": 512})
    yield e
    e.shutdown()


def collect(engine, req):
    async def run():
        return [d async for d in engine.generate(req)]

    return engine.submit(run()).result(timeout=10)


def test_generates_deterministic_tokens_and_reports_cached_prefix(engine):
    prompt = list(range(1000, 1100))
    first = collect(engine, request("a", prompt))
    tokens = [t for d in first for t in d.token_ids]
    assert len(tokens) == 4 and first[-1].finish_reason == "length" and first[-1].cached_tokens == 0
    again = collect(engine, request("b", prompt))
    assert [t for d in again for t in d.token_ids] == tokens
    assert again[-1].cached_tokens == 96  # 6 full blocks of 16


def test_a_request_resumed_with_its_first_tokens_continues_as_it_would_have(engine):
    """What a migration sends another worker: the prompt and the tokens already sent."""
    prompt = list(range(2000, 2100))
    whole = [t for d in collect(engine, request("w", prompt, max_tokens=12)) for t in d.token_ids]
    rest = [t for d in collect(engine, request("r", prompt + whole[:5], max_tokens=7)) for t in d.token_ids]
    assert rest == whole[5:]


def test_cached_prefix_makes_the_first_token_faster(engine):
    async def ttft(req):
        start = asyncio.get_running_loop().time()
        async for _ in engine.generate(req):
            return asyncio.get_running_loop().time() - start

    long_prompt = list(range(5000, 7000))  # 2000 tokens: 4 steps of 512 when uncached
    cold = engine.submit(ttft(request("c", long_prompt, 1))).result()
    warm = engine.submit(ttft(request("w", long_prompt, 1))).result()
    assert warm < cold / 2


def test_stop_token_and_abort(engine):
    prompt = list(range(10))
    first = [t for d in collect(engine, request("x", prompt, 8)) for t in d.token_ids]
    stopped = collect(engine, request("y", prompt, 8, stop_token_ids=[first[2]]))
    assert [t for d in stopped for t in d.token_ids] == first[:3] and stopped[-1].finish_reason == "stop"

    async def aborted():
        out = []
        async for d in engine.generate(request("z", prompt, 200)):
            out.append(d)
            if len(out) == 2:
                await engine.abort("z")
        return out

    out = engine.submit(aborted()).result(timeout=10)
    assert out[-1].finish_reason is None  # the stream just ends; serving reports "abort"
    assert not engine.running and not engine.waiting


def test_a_request_that_can_never_fit_is_refused(engine):
    with pytest.raises(ValueError, match="KV blocks"):
        collect(engine, request("huge", list(range(10)), 10_000))


def test_prefill_and_decode_roles_hand_over_like_vllms():
    timing = Timing(base_ms=2.0, prefill_per_token_ms=0.05, speedup=1.0).model_dump()
    args = {"block_size": 16, "num_blocks": 256, "timing": timing, "max_num_batched_tokens": 256}
    prefill, decode, aggregated = SimEngine(args, "prefill"), SimEngine(args, "decode"), SimEngine(args)
    try:
        prompt = list(range(3000, 4000))
        whole = [t for d in collect(aggregated, request("a", prompt, 6)) for t in d.token_ids]
        first = collect(prefill, request("p", prompt, 6))  # max_tokens becomes 1 on a prefill instance
        assert [t for d in first for t in d.token_ids] == whole[:1] and first[-1].finish_reason == "length"
        params = first[-1].kv_transfer_params
        decode.check_kv_transfer(params)
        with pytest.raises(BadRequest, match="kv_transfer_params"):
            decode.check_kv_transfer({"remote_host": "x"})

        async def timed(req):
            start = asyncio.get_running_loop().time()
            deltas = [d async for d in decode.generate(req)]
            return asyncio.get_running_loop().time() - start, deltas

        remote_s, deltas = decode.submit(timed(EngineRequest("d", prompt, SamplingParams(max_tokens=6),
                                                             kv_transfer_params=params))).result()  # fmt: skip
        assert [t for d in deltas for t in d.token_ids] == whole  # token 1 again, then the rest
        local_s, _ = decode.submit(timed(EngineRequest("l", list(range(5000, 6000)), SamplingParams(max_tokens=6),
                                                       kv_transfer_params={}))).result()  # fmt: skip
        assert remote_s < local_s / 2  # the prompt's 4 prefill steps were skipped
    finally:
        for e in (prefill, decode, aggregated):
            e.shutdown()


@pytest.mark.parametrize("step_s", [0.0001, 0.0003, 0.004])
def test_the_pacer_lets_the_simulated_time_pass_on_average_even_for_steps_under_a_millisecond(step_s):
    steps = round(0.08 / step_s)  # 80 ms of simulated time; slept one by one, 0.1 ms steps took 800 ms

    async def run() -> float:
        pacer, start = Pacer(), time.perf_counter()
        for _ in range(steps):
            await pacer.wait(step_s)
        return time.perf_counter() - start

    elapsed = asyncio.run(run())
    assert 0.08 - MIN_SLEEP_S <= elapsed < 0.08 * 2
