"""The simulated engine's metrics: prefix lookups counted at admission, KV usage from the blocks held,
and on a decode instance the KV received from a prefill instance."""

from __future__ import annotations

from engines.request import EngineRequest
from engines.sim.engine import SimEngine
from engines.sim.timing import Timing
from kvmesh.sampling import SamplingParams

ARGS = {"block_size": 16, "num_blocks": 64, "timing": Timing(base_ms=1.0, speedup=1.0).model_dump()}


def run(engine, request_id, prompt, max_tokens=2, kv_transfer_params=None):
    async def collect():
        request = EngineRequest(request_id, prompt, SamplingParams(max_tokens=max_tokens),
                                kv_transfer_params=kv_transfer_params)  # fmt: skip
        return [d async for d in engine.generate(request)]

    return engine.submit(collect()).result(timeout=10)


def sample(engine):
    async def take():
        return engine.metrics_sample()

    return engine.submit(take()).result(timeout=10)


def test_prompt_and_hit_tokens_are_counted_and_usage_falls_back_when_requests_end():
    engine = SimEngine(ARGS)
    try:
        prompt = list(range(1000, 1100))
        run(engine, "a", prompt)
        run(engine, "b", prompt)
        taken = sample(engine)
        assert (taken.prompt_tokens, taken.prefix_cache_hit_tokens) == (200, 96)
        assert (taken.running_sequences, taken.waiting_sequences, taken.kv_usage_ratio) == (0, 0, 0.0)
        assert taken.kv_transfer_seconds == []  # an aggregated instance pulls no KV

        async def usage_while_running():
            stream = engine.generate(EngineRequest("c", list(range(10)), SamplingParams(max_tokens=50)))
            await anext(stream)
            during = engine.metrics_sample()
            await engine.abort("c")
            return during

        during = engine.submit(usage_while_running()).result(timeout=10)
        assert during.running_sequences == 1 and during.kv_usage_ratio == 4 / 64  # 60 tokens: 4 blocks of 16
    finally:
        engine.shutdown()


def test_a_decode_instance_counts_the_kv_it_received():
    prefill, decode = SimEngine(ARGS, "prefill"), SimEngine({**ARGS, "kv_bytes_per_token": 10}, "decode")
    try:
        prompt = list(range(3000, 3100))
        params = run(prefill, "p", prompt)[-1].kv_transfer_params
        run(decode, "d", prompt, kv_transfer_params=params)
        taken = sample(decode)
        assert taken.kv_transfer_bytes == 100 * 10 and len(taken.kv_transfer_seconds) == 1
        assert 0 <= taken.kv_transfer_seconds[0] < 1
    finally:
        prefill.shutdown()
        decode.shutdown()
