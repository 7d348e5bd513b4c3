"""`kvmesh hash`: print the canonical block hashes of token ids read from stdin (for debugging
what the router and kvindex see)."""

from __future__ import annotations

import sys

import typer

from kvmesh import hashing


def hash_command(
    block_size: int = typer.Option(..., "--block-size", min=1, help="KV block size in tokens"),
    identity: str = typer.Option(
        "", help="model or LoRA name folded into the hash seed, as Dynamo folds a LoRA name (empty: none)"
    ),
) -> None:
    """Reads whitespace-separated token ids on stdin; prints `<block index> <local hash> <sequence hash>`
    (unsigned decimal) for each full block."""
    try:
        tokens = hashing.parse_tokens(sys.stdin.read().split())
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="stdin") from None
    for index, block in enumerate(hashing.block_hashes(tokens, block_size, identity)):
        print(index, block.local, block.seq)


def add_commands(app: typer.Typer) -> None:
    app.command("hash")(hash_command)
