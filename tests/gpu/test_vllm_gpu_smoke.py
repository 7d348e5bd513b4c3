"""GPU smoke test: kvmesh's vLLM engine adapter on a CUDA build of vLLM. Skipped without a GPU
(these machines have none); run it with `pytest tests/gpu` where `pip install -e .[gpu]` works."""

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")


def test_greedy_generation_on_gpu():
    from engines.request import EngineRequest
    from engines.vllm_engine import VllmEngine
    from kvmesh.sampling import SamplingParams

    engine = VllmEngine({"kv_cache_memory_bytes": None, "gpu_memory_utilization": 0.5, "enforce_eager": False})
    try:
        prompt = [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198]
        request = EngineRequest("gpu-1", prompt, SamplingParams(max_tokens=8, temperature=0.0))

        async def collect():
            return [d async for d in engine.generate(request)]

        deltas = engine.submit(collect()).result(timeout=120)
        assert deltas[-1].finish_reason in ("stop", "length")
        assert sum(len(d.token_ids) for d in deltas) > 0
    finally:
        engine.shutdown()
