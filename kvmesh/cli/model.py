"""`kvmesh model`: the catalog of packaged models and their one-time conversion."""

from __future__ import annotations

import typer
from rich.console import Console

from kvmesh import models

app = typer.Typer(no_args_is_help=True, help="Packaged models: list and prepare.")
console = Console()


@app.command("list")
def list_models() -> None:
    """The catalog, with where each prepared model lives."""
    for m in models.CATALOG.values():
        ready = (models.model_dir(m.name) / "config.json").exists()
        state = f"ready at {models.model_dir(m.name)}" if ready else "not prepared"
        console.print(f"[bold]{m.name}[/] ({m.license}) — {m.description} — {state}")


@app.command()
def prepare(name: str = typer.Argument(models.DEFAULT_MODEL, help="catalog name")) -> None:
    """Convert a packaged GGUF model to a Hugging Face folder (once; later calls return at once)."""
    if name not in models.CATALOG:
        raise typer.BadParameter(f"unknown model {name!r}; known: {', '.join(models.CATALOG)}")
    converting = not (models.model_dir(name) / "config.json").exists()
    with console.status(f"converting {name} from its GGUF file (about 30 s)…" if converting else "checking…"):
        path = models.prepare(name)
    console.print(f"{name}: ready at {path}")
