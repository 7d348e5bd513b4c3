"""Canonical KV block hashes: the contract between engines, kvindex, router and gateway.

The scheme is NVIDIA Dynamo's, byte for byte (tests pin it with vectors):
  local[i] = xxh3_64(tokens of block i as u32 little-endian, seed=1337)
  seq[0]   = local[0]
  seq[i]   = xxh3_64(le_u64(seq[i-1]) ‖ le_u64(local[i]), seed=1337)
Only full blocks are hashed: a partial last block is never cached as such by the engines.

A model/LoRA identity, when given, is folded into block 0 so that two models never share keys:
  local[0] = xxh3_64(identity UTF-8 ‖ tokens of block 0, seed=1337)
With no identity the hashes equal Dynamo's plain ones.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import xxhash

SEED = 1337
_PAIR = struct.Struct("<QQ")


@dataclass(frozen=True)
class BlockHash:
    local: int
    seq: int


def local_hash(tokens: Sequence[int], identity: bytes = b"") -> int:
    return xxhash.xxh3_64_intdigest(identity + np.asarray(tokens, dtype="<u4").tobytes(), seed=SEED)


def chain(parent_seq: int | None, local: int) -> int:
    """The sequence hash of a block whose predecessor's sequence hash is `parent_seq`."""
    if parent_seq is None:
        return local
    return xxhash.xxh3_64_intdigest(_PAIR.pack(parent_seq, local), seed=SEED)


def block_hashes(
    tokens: Sequence[int], block_size: int, identity: str = "", parent_seq: int | None = None
) -> list[BlockHash]:
    """Hashes of the full blocks of `tokens`. `parent_seq` continues a chain whose earlier blocks
    were hashed before (then no identity: it lives in block 0 only)."""
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    data = np.asarray(tokens, dtype="<u4")
    salt = identity.encode() if parent_seq is None else b""
    out: list[BlockHash] = []
    for start in range(0, len(data) - block_size + 1, block_size):
        local = xxhash.xxh3_64_intdigest(salt + data[start : start + block_size].tobytes(), seed=SEED)
        salt = b""
        parent_seq = chain(parent_seq, local)
        out.append(BlockHash(local, parent_seq))
    return out


def sequence_hashes(tokens: Sequence[int], block_size: int, identity: str = "") -> list[int]:
    return [b.seq for b in block_hashes(tokens, block_size, identity)]


def parse_tokens(words: Iterable[str]) -> list[int]:
    """Token ids from text (e.g. stdin of `kvmesh hash`): non-negative integers that fit u32."""
    out = []
    for word in words:
        try:
            value = int(word)
        except ValueError:
            raise ValueError(f"not a token id: {word!r}") from None
        if not 0 <= value < 2**32:
            raise ValueError(f"token id out of u32 range: {value}")
        out.append(value)
    return out
