"""GPU smoke tests: kvmesh's TensorRT-LLM engine adapter (aggregated, and context-only →
generation-only with the KV moved by the cache transceiver). Skipped without TensorRT-LLM and a
GPU — never executed on the CPU machines kvmesh is built on; run with `pytest tests/gpu` where
`pip install -e .[gpu]` works. The repositories they mirror: triton_models/trtllm*."""

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tensorrt_llm")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")

PROMPT = [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198] * 4


def engine_args(name: str):
    from kvmesh.repo import spec

    repository = Path(__file__).resolve().parents[2] / "triton_models" / "repository.toml"
    models = {m.name: m for m in spec.load(repository).models}
    return models[name].full_engine_args()


def collect(engine, request):
    async def run():
        return [d async for d in engine.generate(request)]

    return engine.submit(run()).result(timeout=300)


def greedy(request_id: str, max_tokens: int = 16, transfer=None):
    from engines.request import EngineRequest
    from kvmesh.sampling import SamplingParams

    return EngineRequest(request_id, PROMPT, SamplingParams(max_tokens=max_tokens, temperature=0.0), {}, transfer)


def test_aggregated_greedy_generation():
    from engines.trtllm.engine import TrtllmEngine

    engine = TrtllmEngine(engine_args("trtllm"))
    try:
        deltas = collect(engine, greedy("agg"))
        assert deltas[-1].finish_reason in ("stop", "length") and sum(len(d.token_ids) for d in deltas) > 0
    finally:
        engine.shutdown()


def test_context_then_generation_equals_aggregated():
    from engines.trtllm.engine import TrtllmEngine

    aggregated = TrtllmEngine(engine_args("trtllm"))
    try:
        expected = [t for d in collect(aggregated, greedy("agg")) for t in d.token_ids]
    finally:
        aggregated.shutdown()
    context = TrtllmEngine(engine_args("trtllm_prefill"), role="prefill")
    generation = TrtllmEngine(engine_args("trtllm_decode"), role="decode")
    try:
        (first,) = collect(context, greedy("ctx"))
        assert first.kv_transfer_params and len(first.token_ids) == 1
        generation.check_kv_transfer(first.kv_transfer_params)
        tokens = [t for d in collect(generation, greedy("gen", transfer=first.kv_transfer_params)) for t in d.token_ids]
        # kvmesh's decode contract: the whole completion, its first token the context phase's.
        assert tokens[0] == first.token_ids[0] and tokens == expected
    finally:
        context.shutdown()
        generation.shutdown()
