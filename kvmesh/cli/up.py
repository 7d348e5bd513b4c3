"""`kvmesh up` and `kvmesh status` (filled in below)."""

import typer


def add_commands(app: typer.Typer) -> None:
    pass
