"""`kvmesh repo build SPEC --out DIR` and `kvmesh repo check DIR`: author and validate Triton model
repositories of kvmesh engine models (vLLM, TensorRT-LLM, simulated; aggregated, prefill, decode)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from kvmesh.repo import check, render, spec

app = typer.Typer(no_args_is_help=True, help="Triton model repositories for kvmesh's engines.")
console = Console(highlight=False)


@app.command("build")
def build_command(
    spec_file: Path = typer.Argument(..., dir_okay=False, help="the repository spec (.toml, .yaml)"),
    out: Path = typer.Option(..., "--out", file_okay=False, help="where the repository goes"),
) -> None:
    """Render every model of the spec into OUT/<name>/config.pbtxt and OUT/<name>/1/model.py."""
    try:
        repository = spec.load(spec_file)
    except spec.SpecError as e:
        console.print(f"[red]{e}[/]")
        raise typer.Exit(2) from None
    written = render.write(repository, spec_file.name, out)
    problems = check.check_repository(out)
    for problem in problems:
        console.print(f"[red]{problem}[/]")
    console.print(f"wrote {len(written)} files for {len(repository.models)} models to {out}")
    raise typer.Exit(1 if problems else 0)


@app.command("check")
def check_command(repository: Path = typer.Argument(..., help="a Triton model repository")) -> None:
    """Validate every model's config.pbtxt (Triton's schema), interface, role and engine."""
    problems = check.check_repository(repository)
    for problem in problems:
        console.print(f"[red]{problem}[/]")
    models = len(list(repository.glob("*/config.pbtxt")))
    console.print(f"{models} models, {len(problems)} problems" if problems else f"{models} models: ok")
    raise typer.Exit(1 if problems else 0)
