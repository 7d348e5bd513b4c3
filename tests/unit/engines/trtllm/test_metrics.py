"""TensorRT-LLM's iteration stats as engine gauges, and a token's KV size from a model config."""

from __future__ import annotations

from types import SimpleNamespace

from engines.trtllm import metrics


def test_gauges_from_an_iteration_stats_dict():
    stats = {"numActiveRequests": 3, "numQueuedRequests": 2, "kvCacheStats": {"maxNumBlocks": 200, "usedNumBlocks": 50}}
    assert metrics.gauges(stats) == (0.25, 3, 2)
    assert metrics.gauges({}) == (0.0, 0, 0)


def test_kv_bytes_per_token_counts_k_and_v_of_every_layer():
    smollm = SimpleNamespace(num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, hidden_size=576,
                             torch_dtype="bfloat16")  # fmt: skip
    assert metrics.kv_bytes_per_token(smollm) == 2 * 30 * 3 * 64 * 2
