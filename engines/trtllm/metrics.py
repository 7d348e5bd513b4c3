"""TensorRT-LLM's iteration statistics as kvmesh's engine gauges (engines/metrics.py), and the size
of a token's KV for the decode side's transfer bytes. Written against the LLM API's documented
`get_stats_async` dictionaries (`enable_iter_perf_stats`); not run on a GPU here."""

from __future__ import annotations

from typing import Any

# torch_dtype names as Hugging Face configs write them → bytes per element.
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1}


def gauges(stats: dict[str, Any]) -> tuple[float, int, int]:
    """(KV usage 0-1, running, waiting) from one iteration's stats."""
    kv = stats.get("kvCacheStats") or {}
    total = kv.get("maxNumBlocks") or 0
    usage = kv.get("usedNumBlocks", 0) / total if total else 0.0
    return usage, int(stats.get("numActiveRequests", 0)), int(stats.get("numQueuedRequests", 0))


def kv_bytes_per_token(config: Any) -> int:
    """K and V of every layer's KV heads, in the model's dtype."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    dtype = str(getattr(config, "torch_dtype", "bfloat16")).removeprefix("torch.")
    return 2 * config.num_hidden_layers * heads * head_dim * DTYPE_BYTES.get(dtype, 2)
