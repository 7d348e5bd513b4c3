"""The `kvmesh` command: one subcommand per service, plus up, status, top, model, repo, bench, profile, hash,
certs and keys."""

from __future__ import annotations

import typer

from kvmesh.cli import bench, block_hash, certs, keys, model, profile, repo, services, top, up

app = typer.Typer(no_args_is_help=True, add_completion=False, help="kvmesh: an LLM serving mesh over Triton.")
app.add_typer(model.app, name="model")
app.add_typer(bench.app, name="bench")
app.add_typer(repo.app, name="repo")
app.add_typer(certs.app, name="certs")
app.add_typer(keys.app, name="keys")
services.add_commands(app)
up.add_commands(app)
top.add_commands(app)
block_hash.add_commands(app)
profile.add_commands(app)


def main() -> None:
    app()
