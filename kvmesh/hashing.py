"""Canonical KV block hashes: the contract between engines, kvindex, router and gateway.

The scheme is NVIDIA Dynamo's (lib/kv-router protocols: compute_block_hash_for_seq and
compute_seq_hash_for_block), byte for byte; tests pin it with vectors:
  local[i] = xxh3_64(tokens of block i as u32 little-endian, seed=S)
  seq[0]   = local[0]
  seq[i]   = xxh3_64(le_u64(seq[i-1]) ‖ le_u64(local[i]), seed=1337)
Only full blocks are hashed: a partial last block is never cached as such by the engines.

S is 1337, or, with an identity (kvmesh: the served model name; Dynamo: a LoRA name),
(1337 + xxh3_64(identity)) mod 2⁶⁴ — Dynamo's LoRA folding — so two models never share keys.
"""

from __future__ import annotations

import array
import struct
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import xxhash

SEED = 1337
_PAIR = struct.Struct("<QQ")
_U32 = next(code for code in "IL" if array.array(code).itemsize == 4)


@dataclass(frozen=True)
class BlockHash:
    local: int
    seq: int


def block_seed(identity: str = "") -> int:
    if not identity:
        return SEED
    return (SEED + xxhash.xxh3_64_intdigest(identity.encode())) % 2**64


def block_hashes(
    tokens: Sequence[int], block_size: int, identity: str = "", parent_seq: int | None = None
) -> list[BlockHash]:
    """Hashes of the full blocks of `tokens`. `parent_seq` continues a chain whose earlier blocks
    were hashed before."""
    return [BlockHash(local, seq) for local, seq in _chained(tokens, block_size, identity, parent_seq)]


def sequence_hashes(
    tokens: Sequence[int], block_size: int, identity: str = "", parent_seq: int | None = None
) -> list[int]:
    """The sequence hashes of `block_hashes`, without an object per block: every routing decision
    and every block of every KV event comes through here."""
    return [seq for _, seq in _chained(tokens, block_size, identity, parent_seq)]


def _chained(
    tokens: Sequence[int], block_size: int, identity: str, parent_seq: int | None
) -> Iterator[tuple[int, int]]:
    """(local, sequence) hash of each full block."""
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    data = _u32_le(tokens)
    seed, step, digest, pack = block_seed(identity), 4 * block_size, xxhash.xxh3_64_intdigest, _PAIR.pack
    for start in range(0, len(data) - step + 1, step):
        local = digest(data[start : start + step], seed=seed)
        parent_seq = local if parent_seq is None else digest(pack(parent_seq, local), seed=SEED)
        yield local, parent_seq


def _u32_le(tokens: Sequence[int]) -> memoryview:
    """The tokens as u32 little-endian bytes. array.array, not numpy: from a list it is ~3× faster,
    and every KV event's tokens come through here. Raises OverflowError outside u32."""
    data = array.array(_U32, tokens)
    if sys.byteorder == "big":
        data.byteswap()
    return memoryview(data).cast("B")


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
