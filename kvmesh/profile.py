"""An engine configuration's measured performance (`kvmesh profile` writes it, the planner reads
it): prefill TTFT and throughput against input length, decode ITL and throughput against batch
size and context length. Read between the measured points linearly, never beyond them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field, model_validator


class PrefillPoint(BaseModel):
    isl: int = Field(gt=0, description="prompt tokens")
    ttft_ms: float = Field(gt=0, description="one request alone on an idle worker")
    tokens_per_s: float = Field(gt=0, description="prompt tokens per second a saturated worker prefills")


class DecodePoint(BaseModel):
    batch: int = Field(gt=0)
    context: int = Field(gt=0, description="tokens in each sequence's KV (prompt + generated so far)")
    itl_ms: float = Field(gt=0)

    @property
    def tokens_per_s(self) -> float:
        return self.batch * 1000.0 / self.itl_ms


class EngineProfile(BaseModel):
    engine: str
    model: str
    prefill: list[PrefillPoint] = Field(min_length=1)
    decode: list[DecodePoint] = Field(min_length=1)

    @model_validator(mode="after")
    def _decode_is_a_grid(self) -> EngineProfile:
        batches, contexts = self.batches(), self.contexts()
        if {(p.batch, p.context) for p in self.decode} != {(b, c) for b in batches for c in contexts}:
            raise ValueError("decode points must cover every (batch, context) pair of a grid")
        return self

    def batches(self) -> list[int]:
        return sorted({p.batch for p in self.decode})

    def contexts(self) -> list[int]:
        return sorted({p.context for p in self.decode})

    def ttft_ms(self, isl: float) -> float:
        points = sorted(self.prefill, key=lambda p: p.isl)
        return float(np.interp(isl, [p.isl for p in points], [p.ttft_ms for p in points]))

    def prefill_tokens_per_s(self, isl: float) -> float:
        points = sorted(self.prefill, key=lambda p: p.isl)
        return float(np.interp(isl, [p.isl for p in points], [p.tokens_per_s for p in points]))

    def itl_ms(self, batch: float, context: float) -> float:
        """Linear in context at each measured batch size, then linear in batch size."""
        contexts = self.contexts()
        by_batch = {(p.batch, p.context): p.itl_ms for p in self.decode}
        at_batch = [float(np.interp(context, contexts, [by_batch[(b, c)] for c in contexts])) for b in self.batches()]
        return float(np.interp(batch, self.batches(), at_batch))

    def decode_capacity(self, itl_target_ms: float, context: float) -> tuple[int, float]:
        """The largest batch whose ITL at `context` meets the target, and the tokens/s it gives;
        (0, 0.0) when even one sequence misses it."""
        best = (0, 0.0)
        for batch in range(1, self.batches()[-1] + 1):
            itl = self.itl_ms(batch, context)
            if itl <= itl_target_ms:
                best = (batch, batch * 1000.0 / itl)
        return best

    def save(self, path: Path) -> Path:
        path.write_text(self.model_dump_json(indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> EngineProfile:
        return cls.model_validate_json(Path(path).read_text())
