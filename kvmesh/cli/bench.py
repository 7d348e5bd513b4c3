"""`kvmesh bench replay TRACE`: replay a Mooncake (.jsonl) or Azure (.csv) trace against a running
mesh and report TTFT / ITL / E2E percentiles, prefix hit ratio, throughput and per-worker load."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kvmesh import models
from kvmesh.replay import report, traces
from kvmesh.replay.runner import ReplayOptions, replay
from kvmesh.tls import MutualTls

app = typer.Typer(no_args_is_help=True, help="Benchmarks against a running mesh.")
console = Console()


@app.command("replay")
def replay_command(
    trace: Path = typer.Argument(..., exists=True, dir_okay=False, help="Mooncake .jsonl or Azure .csv"),
    target: str = typer.Option("127.0.0.1:8081", help="the gateway's gRPC address"),
    model: str = typer.Option(models.DEFAULT_MODEL, help="served model name"),
    time_scale: float = typer.Option(1.0, min=0.0, help="arrival times × this (0.1 = ten times faster)"),
    limit: int = typer.Option(None, min=1, help="first N requests only"),
    max_output_tokens: int = typer.Option(None, min=1, help="cap each request's output length"),
    max_in_flight: int = typer.Option(256, min=1),
    out: Path = typer.Option(Path("replay-results"), help="directory for <name>.json and <name>.png"),
    name: str = typer.Option("", help="default: the trace's file name"),
    tls_dir: Path = typer.Option(None, help="the mesh's `kvmesh certs dev` directory (its client certificate)"),
) -> None:
    """Open-loop replay at the trace's arrival times (scaled)."""
    try:
        requests = traces.load(trace, limit)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="TRACE") from None
    options = ReplayOptions(time_scale, max_output_tokens, max_in_flight)
    client_tls = MutualTls.in_dir(tls_dir, "client") if tls_dir else None
    columns = [TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("replay", total=len(requests))
        outcomes, wall = asyncio.run(
            replay(target, model, requests, options, lambda _: progress.advance(task), client_tls)
        )
    summary = report.summarize(outcomes, wall)
    paths = report.write(out, name or trace.stem, summary, outcomes)
    console.print_json(json.dumps(summary))
    console.print(f"written: {', '.join(map(str, paths))}")
    if summary["errors"]:
        raise typer.Exit(1)
