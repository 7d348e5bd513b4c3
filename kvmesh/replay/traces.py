"""Workload traces → requests with arrival times and token ids.

Mooncake JSONL (`timestamp` ms, `input_length`, `output_length`, `hash_ids` of 512-token blocks):
each hash id becomes a deterministic block of token ids, so requests sharing ids share real token
prefixes. Azure CSV (`TIMESTAMP`, `ContextTokens`, `GeneratedTokens`): no prefix information, so
every prompt is unique.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

MOONCAKE_BLOCK = 512
# Ordinary token ids in common vocabularies (above special tokens, below ~32k).
TOKEN_RANGE = (1000, 30000)
# Seeds of unique prompts, far from any trace's hash ids.
UNIQUE_SEEDS = 1 << 48


@dataclass(frozen=True)
class TraceRequest:
    index: int
    arrival_s: float
    input_length: int
    output_length: int
    # Mooncake: the prefix block ids; Azure: empty (a unique prompt).
    hash_ids: tuple[int, ...] = ()

    def prompt(self, block_tokens: int = MOONCAKE_BLOCK) -> list[int]:
        if not self.hash_ids:
            return _block(UNIQUE_SEEDS + self.index, self.input_length)
        blocks = [_block(h, block_tokens) for h in self.hash_ids]
        return [t for b in blocks for t in b][: self.input_length]


def _block(seed: int, size: int) -> list[int]:
    return np.random.default_rng(seed).integers(*TOKEN_RANGE, size=size).tolist()


def load(path: Path, limit: int | None = None) -> list[TraceRequest]:
    if path.suffix == ".jsonl":
        reader = _mooncake(path)
    elif path.suffix == ".csv":
        reader = _azure(path)
    else:
        raise ValueError(f"{path}: unknown trace format (expected Mooncake .jsonl or Azure .csv)")
    out = []
    for request in reader:
        if limit is not None and len(out) >= limit:
            break
        out.append(request)
    if not out:
        raise ValueError(f"{path}: no requests")
    return out


def _mooncake(path: Path) -> Iterator[TraceRequest]:
    with path.open() as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                yield TraceRequest(
                    i, row["timestamp"] / 1000, int(row["input_length"]), int(row["output_length"]),
                    tuple(row.get("hash_ids", ())),
                )  # fmt: skip
            except (KeyError, ValueError, TypeError) as e:
                raise ValueError(f"{path}:{i + 1}: not a Mooncake trace line ({e})") from None


def _azure(path: Path) -> Iterator[TraceRequest]:
    with path.open(newline="") as f:
        start = None
        for i, row in enumerate(csv.DictReader(f)):
            try:
                at = datetime.fromisoformat(row["TIMESTAMP"][:26])
                start = start or at
                yield TraceRequest(
                    i, (at - start).total_seconds(), int(row["ContextTokens"]), int(row["GeneratedTokens"])
                )
            except (KeyError, ValueError, TypeError) as e:
                raise ValueError(f"{path}:{i + 2}: not an Azure trace row ({e})") from None
