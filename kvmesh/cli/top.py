"""`kvmesh top`: the mesh live in the terminal, redrawn every --interval-s: the workers with their
load, KV and index blocks, and the gateway's rates and latencies over the last interval (docs/top.md)."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.live import Live
from rich.text import Text

from kvmesh.auth import ADMIN_KEY_ENV
from kvmesh.cli.options import default
from kvmesh.cli.top_data import MeshReader, RouterUnreachable, frame
from kvmesh.cli.top_view import render
from kvmesh.cli.up import ROUTER_ADDRESS
from kvmesh.settings import CommonSettings
from kvmesh.tls import MutualTls
from services.gateway.config import GatewaySettings
from services.kvindex.config import KvIndexSettings

console = Console()
HOST = default(CommonSettings, "host")
KVINDEX_ADDRESS = f"{HOST}:{default(KvIndexSettings, 'port')}"
GATEWAY_PORT = default(GatewaySettings, "http_port")


def top(
    router: str = typer.Option(ROUTER_ADDRESS, help="the router's address"),
    kvindex: str = typer.Option(KVINDEX_ADDRESS, help="kvindex's address"),
    gateway_metrics: str = typer.Option(
        None, help=f"the gateway's metrics URL; default http://{HOST}:{GATEWAY_PORT}/metrics (https with --tls-dir)"
    ),
    tls_dir: Path = typer.Option(None, help="the mesh's `kvmesh certs dev` directory (its client certificate)"),
    admin_key: str = typer.Option("", envvar=ADMIN_KEY_ENV, help="for a mesh with auth on: an admin key"),
    interval_s: float = typer.Option(1.0, min=0.1, help="seconds between frames; rates are over this interval"),
    once: bool = typer.Option(False, help="print one frame (two readings --interval-s apart) and exit"),
) -> None:
    """Live workers, their load and KV, and the gateway's rates, redrawn every --interval-s."""
    tls = MutualTls.in_dir(tls_dir, "client") if tls_dir else None
    gateway_metrics = gateway_metrics or f"{'https' if tls_dir else 'http'}://{HOST}:{GATEWAY_PORT}/metrics"
    try:
        with MeshReader(router, kvindex, gateway_metrics, tls, admin_key) as reader:
            before = reader.read()
            if once:
                time.sleep(interval_s)
                console.print(render(frame(reader.read(), before)))
                return
            with Live(render(frame(before, None)), console=console, auto_refresh=False) as live:
                while True:
                    time.sleep(interval_s)
                    try:
                        now = reader.read()
                    except RouterUnreachable as e:  # a router restarting: keep trying, as `kvmesh up` restarts it
                        live.update(Text(f"{e}; trying again", style="red"), refresh=True)
                        continue
                    live.update(render(frame(now, before)), refresh=True)
                    before = now
    except RouterUnreachable as e:
        console.print(Text(str(e), style="red"))
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        pass


def add_commands(app: typer.Typer) -> None:
    app.command()(top)
