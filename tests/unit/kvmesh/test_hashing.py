"""Canonical block hashes, pinned by vectors. The local hashes below are what NVIDIA Dynamo 1.6.1's
`dynamo._core.compute_block_hash_for_seq` returned on this machine (pip install
ai-dynamo-runtime==1.6.1, in a scratch venv); sequence hashes follow its
compute_seq_hash_for_block (xxh3_64 of le_u64(parent) ‖ le_u64(local), seed 1337)."""

import subprocess
import sys

import pytest
import xxhash

from kvmesh import hashing

DYNAMO_LOCAL = [
    # (tokens, block size, lora/identity, Dynamo's local hashes)
    (list(range(10)), 4, "", [9143094415614847814, 12124091508212882195]),
    (list(range(10)), 4, "smollm2-135m-instruct", [13136957511248192504, 7508511951983846694]),
    ([1, 2, 3, 4, 5, 6, 7, 8], 8, "", [4595599524572611415]),
]


@pytest.mark.parametrize("tokens, block_size, identity, expected", DYNAMO_LOCAL)
def test_local_hashes_equal_dynamos(tokens, block_size, identity, expected):
    assert [b.local for b in hashing.block_hashes(tokens, block_size, identity)] == expected


def test_sequence_hashes_chain_parent_and_local():
    blocks = hashing.block_hashes(list(range(10)), 4)
    assert blocks[0].seq == blocks[0].local
    parent_then_local = blocks[0].seq.to_bytes(8, "little") + blocks[1].local.to_bytes(8, "little")
    assert blocks[1].seq == xxhash.xxh3_64_intdigest(parent_then_local, seed=1337) == 9510318385840434533


def test_only_full_blocks_and_continuing_a_chain():
    tokens = list(range(100, 133))
    whole = hashing.block_hashes(tokens, 8, "m")
    assert len(whole) == 4  # 33 tokens: the partial fifth block is not hashed
    rest = hashing.block_hashes(tokens[16:], 8, "m", parent_seq=whole[1].seq)
    assert rest == whole[2:]


def test_identity_separates_models():
    assert hashing.sequence_hashes(list(range(8)), 4, "a") != hashing.sequence_hashes(list(range(8)), 4, "b")


def test_token_ids_are_u32():
    with pytest.raises(ValueError, match="out of u32"):
        hashing.parse_tokens(["4294967296"])
    with pytest.raises(ValueError, match="not a token id"):
        hashing.parse_tokens(["7", "x"])


def kvmesh_hash(stdin: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "kvmesh", "hash", "--block-size", "4"]
    return subprocess.run(argv, input=stdin, capture_output=True, text=True)


def test_kvmesh_hash_command_prints_index_local_and_sequence_hash():
    assert kvmesh_hash("0 1 2 3\n4 5 6 7 8 9").stdout.splitlines() == [
        "0 9143094415614847814 9143094415614847814",
        "1 12124091508212882195 9510318385840434533",
    ]
    bad = kvmesh_hash("1 x")
    assert bad.returncode == 2 and "not a token id" in bad.stderr


def test_sequence_hashes_are_block_hashes_seqs_with_or_without_a_parent():
    tokens = list(range(7, 80))
    for identity, parent in (("", None), ("m", None), ("m", 12345)):
        blocks = hashing.block_hashes(tokens, 8, identity, parent_seq=parent)
        assert hashing.sequence_hashes(tokens, 8, identity, parent_seq=parent) == [b.seq for b in blocks]
