"""`kvmesh keys`: API keys and their usage, through a gateway's kvmesh.v1.Keys with an admin key
(KVMESH_ADMIN_KEY, which `kvmesh up` prints once)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import grpc
import typer
from rich.console import Console
from rich.table import Table

from kvmesh import auth
from kvmesh.api_keys import PRIORITIES
from kvmesh.cli.options import default
from kvmesh.net import is_loopback
from kvmesh.tls import MutualTls
from kvmesh.v1 import keys_pb2, keys_pb2_grpc
from services.gateway.config import GatewaySettings

T = TypeVar("T")
app = typer.Typer(no_args_is_help=True, help="API keys: create, list, revoke, usage (an admin key's work).")
console = Console()

GATEWAY = typer.Option(
    f"{default(GatewaySettings, 'host')}:{default(GatewaySettings, 'grpc_port')}", help="the gateway's gRPC address"
)
ADMIN_KEY = typer.Option("", envvar=auth.ADMIN_KEY_ENV, help=f"an admin key (default: ${auth.ADMIN_KEY_ENV})")
TLS_DIR = typer.Option(
    None, help="the mesh's `kvmesh certs dev` directory: its CA checks the gateway, its client certificate is shown"
)
CA_FILE = typer.Option(None, help="TLS to a gateway whose certificate this CA signed (no client certificate)")


def _call(
    gateway: str, admin_key: str, tls_dir: Path | None, ca: Path | None,
    rpc: Callable[[keys_pb2_grpc.KeysStub, tuple], T],
) -> T:  # fmt: skip
    if tls_dir:
        channel = grpc.secure_channel(gateway, MutualTls.in_dir(tls_dir, "client").channel_credentials())
    elif ca:
        channel = grpc.secure_channel(gateway, grpc.ssl_channel_credentials(root_certificates=ca.read_bytes()))
    elif not is_loopback(gateway.rsplit(":", 1)[0]):
        raise typer.BadParameter(f"{gateway} is not loopback: the admin key would cross the network in plain text; "
                                 "give --ca (or --tls-dir)", param_hint="--gateway")  # fmt: skip
    else:
        channel = grpc.insecure_channel(gateway)
    try:
        with channel:
            return rpc(keys_pb2_grpc.KeysStub(channel), auth.bearer(admin_key))
    except grpc.RpcError as e:
        console.print(f"[red]gateway at {gateway}: {e.details() or e.code().name}[/]")
        raise typer.Exit(1) from None


@app.command()
def create(
    name: str = typer.Argument(..., help="1-64 of A-Z a-z 0-9 . _ -"),
    rpm: int = typer.Option(0, min=0, help="requests per minute; 0: no limit"),
    tpm: int = typer.Option(0, min=0, help="prompt + completion tokens per minute; 0: no limit"),
    max_concurrency: int = typer.Option(0, min=0, help="requests in flight at once; 0: no limit"),
    priority: str = typer.Option("normal", help="high, normal or low: who goes first when the mesh is full"),
    models: str = typer.Option("", help="comma-separated models it may use; empty: every one"),
    admin: bool = typer.Option(False, help="an admin key (keys, Purge, SetTargets, the internal RPCs)"),
    gateway: str = GATEWAY,
    admin_key: str = ADMIN_KEY,
    tls_dir: Path = TLS_DIR,
    ca: Path = CA_FILE,
) -> None:
    """A new key. Its secret goes to stdout, once: it is kept nowhere but in what you do with it."""
    if priority not in PRIORITIES:
        raise typer.BadParameter(f"{priority!r}: one of {', '.join(PRIORITIES)}", param_hint="--priority")
    info = keys_pb2.KeyInfo(
        name=name, role=keys_pb2.KEY_ROLE_ADMIN if admin else keys_pb2.KEY_ROLE_USER, rpm=rpm, tpm=tpm,
        max_concurrency=max_concurrency, priority=keys_pb2.Priority.Value(f"PRIORITY_{priority.upper()}"),
        models=[m.strip() for m in models.split(",") if m.strip()],
    )  # fmt: skip
    reply = _call(
        gateway, admin_key, tls_dir, ca, lambda stub, md: stub.Create(keys_pb2.KeysCreateRequest(key=info), metadata=md)
    )
    print(reply.secret)
    print(f"key {name!r} created; its secret above is shown this once", file=sys.stderr)


@app.command("list")
def list_keys(gateway: str = GATEWAY, admin_key: str = ADMIN_KEY, tls_dir: Path = TLS_DIR, ca: Path = CA_FILE) -> None:
    """Every key (never a secret)."""
    reply = _call(gateway, admin_key, tls_dir, ca, lambda stub, md: stub.List(keys_pb2.KeysListRequest(), metadata=md))
    table = Table("name", "role", "priority", "rpm", "tpm", "concurrency", "models")
    for k in reply.keys:
        limits = [str(v) if v else "-" for v in (k.rpm, k.tpm, k.max_concurrency)]
        priority = keys_pb2.Priority.Name(k.priority).removeprefix("PRIORITY_").lower()
        role = keys_pb2.KeyRole.Name(k.role).removeprefix("KEY_ROLE_").lower()
        table.add_row(k.name, role, priority, *limits, ",".join(k.models) or "all")
    console.print(table if reply.keys else "no keys")


@app.command()
def revoke(
    name: str, gateway: str = GATEWAY, admin_key: str = ADMIN_KEY, tls_dir: Path = TLS_DIR, ca: Path = CA_FILE
) -> None:  # fmt: skip
    """The key stops working on every gateway within a second."""
    _call(
        gateway,
        admin_key,
        tls_dir,
        ca,
        lambda stub, md: stub.Revoke(keys_pb2.KeysRevokeRequest(name=name), metadata=md),
    )
    console.print(f"key {name!r} revoked")


@app.command()
def usage(
    name: list[str] = typer.Option(None, help="only these keys (repeat the flag); default: all"),
    hours: int = typer.Option(24, min=1, help="the last this many hours, the current one included"),
    gateway: str = GATEWAY,
    admin_key: str = ADMIN_KEY,
    tls_dir: Path = TLS_DIR,
    ca: Path = CA_FILE,
) -> None:
    """Requests and prompt/cached/completion tokens per key, model and hour (UTC)."""
    request = keys_pb2.KeysUsageRequest(names=name or [], hours=hours)
    reply = _call(gateway, admin_key, tls_dir, ca, lambda stub, md: stub.Usage(request, metadata=md))
    table = Table("hour (UTC)", "key", "model", "requests", "prompt", "cached", "completion")
    for r in reply.rows:
        figures = (r.requests, r.prompt_tokens, r.cached_tokens, r.completion_tokens)
        table.add_row(r.hour, r.name, r.model, *map(str, figures))
    console.print(table if reply.rows else "no usage recorded")
