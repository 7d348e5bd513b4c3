"""`kvmesh up`: Redis, kvindex, router, the workers (aggregated, or prefill and decode pools), the
gateway, the REST front and optionally the planner and Prometheus on this machine, with mutual TLS on every gRPC
hop (and Redis) when given a `kvmesh certs dev` directory; `kvmesh status`."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import signal
import ssl
import time
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kvmesh import logs, models
from kvmesh.api_keys import PREFIX
from kvmesh.auth import ADMIN_KEY_ENV, MESH_TOKEN_ENV, bearer
from kvmesh.cli import prometheus as prometheus_server
from kvmesh.cli import rest_front
from kvmesh.cli.options import default, setting
from kvmesh.cli.supervisor import Supervisor, http_ok, tail
from kvmesh.net import is_loopback
from kvmesh.prometheus_sd import SdSettings
from kvmesh.redis_server import PASSWORD_ENV, RedisServer, masked
from kvmesh.routing.config import DEFAULT_POLICIES
from kvmesh.settings import DEFAULT_REDIS_URL, WILDCARD_HOSTS, CommonSettings
from kvmesh.tls import CA, MutualTls, blocking_channel, trusting
from kvmesh.v1 import router_pb2, router_pb2_grpc, worker_pb2
from services.gateway.config import GatewaySettings
from services.kvindex.config import KvIndexSettings
from services.planner.config import PlannerSettings
from services.router.config import RouterSettings
from services.worker.config import WorkerSettings

console = Console()
TLS_DIR_HELP = (
    "a `kvmesh certs dev` directory: mutual TLS on every gRPC hop and Redis; HTTPS on the gateway's OpenAI port "
    "and TLS on its gRPC port (with auth off, clients show a certificate of the directory's CA: client.crt), "
    "HTTPS on the REST front"
)


def up(
    model: str = setting(WorkerSettings, "model"),
    host: str = setting(CommonSettings, "host", help="address every service listens on"),
    http_port: int = setting(GatewaySettings, "http_port", help="OpenAI-compatible HTTP", min=1),
    grpc_port: int = setting(GatewaySettings, "grpc_port", help="kvmesh.v1 gRPC (Inference, Models)", min=1),
    # The REST front is a Go program, without a Settings class of its own.
    rest_port: int = typer.Option(8082, help="REST (grpc-gateway over every service; OpenAPI at /openapi.json)"),
    gateway_procs: int = setting(GatewaySettings, "procs", help="gateway processes serving its ports (more cores)"),
    rest_internal: bool = typer.Option(
        False, help="REST also serves the router's, kvindex's and planner's routes (mesh-internal and admin RPCs)"
    ),
    router_port: int = setting(
        RouterSettings, "port", help="the router's gRPC (kvmesh.v1.Router); with --routers N, the first of N", min=1
    ),
    routers: int = typer.Option(
        1, min=1, help="router replicas on --router-port and the ports after it; the gateway fails over between them"
    ),
    kvindex_port: int = setting(KvIndexSettings, "port", help="the kvindex's gRPC (kvmesh.v1.KvIndex)", min=1),
    planner_port: int = setting(PlannerSettings, "port", help="with --planner: its gRPC (kvmesh.v1.Planner)", min=1),
    redis_port: int = typer.Option(
        urlsplit(DEFAULT_REDIS_URL).port, help="for the Redis kvmesh starts (ignored when REDIS_URL is set)"
    ),
    policy: str = setting(RouterSettings, "policy", help=f"routing policy: {', '.join(DEFAULT_POLICIES)}"),
    # An engine, not a model: the workers run <engine>, or <engine>_prefill and <engine>_decode.
    engine: str = typer.Option("vllm", help="the engine the workers run: vllm, sim (simulated) or trtllm (GPU)"),
    engine_args: str = setting(WorkerSettings, "engine_args"),
    workers: int = typer.Option(1, min=1, help="Triton workers; several are pinned to cores round-robin"),
    disagg: bool = typer.Option(
        False, help="a prefill and a decode pool (<engine>_prefill, <engine>_decode), KV moved by NIXL"
    ),
    prefill_workers: int = typer.Option(1, min=1, help="with --disagg: workers in the prefill pool"),
    decode_workers: int = typer.Option(1, min=1, help="with --disagg: workers in the decode pool"),
    disagg_threshold: int = setting(RouterSettings, "disagg_threshold_tokens"),
    route_in_process_below: int = setting(GatewaySettings, "route_in_process_below"),
    planner: bool = typer.Option(False, help="size the prefill and decode pools (needs --disagg and a profile)"),
    planner_profile: Path = typer.Option(None, help="`kvmesh profile` output; default <cache>/profiles/<engine>.json"),
    planner_args: str = typer.Option("", help="more planner flags, e.g. '--ttft-ms 500 --itl-ms 50 --max-replicas 4'"),
    prometheus: bool = typer.Option(
        False, help="Prometheus on 127.0.0.1, its targets kept from the registry: every service and worker"
    ),
    prometheus_port: int = typer.Option(9090, min=1, max=65535, help="with --prometheus: its HTTP port (API, UI)"),
    prometheus_scrape_interval_s: float = setting(
        SdSettings, "interval_s", help="with --prometheus: how often it scrapes, and how often its targets are re-read"
    ),
    tls_dir: Path = typer.Option(None, help=TLS_DIR_HELP, exists=True, file_okay=False),
    auth: str = setting(CommonSettings, "auth"),
    log_dir: Path = typer.Option(None, help="default: <cache>/run/<time>"),
    log_json: bool = typer.Option(False, help="every process logs one JSON object a line, with its trace ids"),
    log_requests: bool = setting(GatewaySettings, "log_requests", help="the gateway logs each finished request"),
    ready_timeout_s: float = typer.Option(900.0),
) -> None:
    """Start the whole mesh and serve until Ctrl-C."""
    log_dir = log_dir or models.cache_dir() / "run" / time.strftime("%Y%m%d-%H%M%S")
    planner_profile = planner_profile or models.cache_dir() / "profiles" / f"{engine}.json"
    if host in WILDCARD_HOSTS:
        raise typer.BadParameter(
            f"{host!r} is every interface, and the services dial each other at --host: give one of this host's "
            "addresses (on several hosts, each service takes --host and --advertise-host: docs/deploy.md)",
            param_hint="--host",
        )
    if auth not in ("auto", "on", "off"):
        raise typer.BadParameter(f"{auth!r}: one of auto, on, off", param_hint="--auth")
    if router_port + routers - 1 > 65535:
        raise typer.BadParameter(f"{routers} routers from port {router_port} pass 65535", param_hint="--routers")
    if planner and not disagg:
        raise typer.BadParameter("the planner sizes prefill and decode pools: add --disagg", param_hint="--planner")
    if planner and not planner_profile.exists():
        raise typer.BadParameter(
            f"{planner_profile} is missing: `kvmesh profile --engine {engine} --out {planner_profile}` makes it",
            param_hint="--planner-profile",
        )
    prometheus_binary = prometheus_server.binary() if prometheus else None
    if prometheus and prometheus_binary is None:
        raise typer.BadParameter(
            "no prometheus binary: scripts/setup.sh unpacks Debian's into build/prometheus", param_hint="--prometheus"
        )
    tls = _tls_in(tls_dir)
    auth_on = auth == "on" or (auth == "auto" and not is_loopback(host))
    # With the directory the gateway's HTTP port is HTTPS; this process, the planner and the curl
    # below show the client certificate (the gateway asks for one of the CA unless keys identify callers).
    client = tls("client")
    client_verify = client.client_ssl_context() if client else True
    gateway_url = f"{'https' if tls_dir else 'http'}://{host}:{http_port}"
    redis = None
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        password = os.environ.get(PASSWORD_ENV) or secrets.token_urlsafe(24)
        try:
            redis = RedisServer(redis_port, host, password=password, tls=tls("redis"))
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint=PASSWORD_ENV) from None
        with console.status(f"starting redis-server on {host}:{redis_port}…"):
            redis.start()
        redis_url = redis.url
    # Secrets go by the environment: a command line is visible to every local user. The services show
    # each other the mesh token; the gateway makes the admin key the key named "admin".
    mesh_token = os.environ.get(MESH_TOKEN_ENV) or secrets.token_urlsafe(32)
    admin_key = os.environ.get(ADMIN_KEY_ENV) or PREFIX + secrets.token_urlsafe(32)
    env = {"REDIS_URL": redis_url, MESH_TOKEN_ENV: mesh_token, ADMIN_KEY_ENV: admin_key}
    env |= {logs.LOG_JSON_ENV: "1"} if log_json else {}
    env |= {"KVMESH_GATEWAY_LOG_REQUESTS": "true"} if log_requests else {}
    supervisor = Supervisor(log_dir, env=env)
    # Our children stop on our terms; SIGTERM is handled like Ctrl-C. SIGINT explicitly too: a
    # launcher that ran us in the background (`cmd &` in a script, nohup) left it ignored, and
    # Python then never raises KeyboardInterrupt, so Ctrl-C or a bench's SIGINT did nothing.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if model in models.CATALOG:
            with console.status(f"preparing {model}…"):
                models.prepare(model)
        common = ["--host", host, "--auth", auth]
        # A worker picks free ports for its Triton while the services below may not have bound theirs.
        router_ports = list(range(router_port, router_port + routers))
        mesh_ports = [http_port, grpc_port, rest_port, *router_ports, kvindex_port, planner_port, redis_port]
        mesh_ports += [prometheus_port] if prometheus else []
        worker_common = [*common, *_flags(tls("worker")), "--reserved-ports", json.dumps(mesh_ports), "--model", model]
        kvindex_args = [*common, *_flags(tls("kvindex")), "--port", str(kvindex_port)]
        supervisor.start("kvindex", "services.kvindex", kvindex_args)
        router_args = [*common, *_flags(tls("router")), "--policy", policy]
        router_args += ["--disagg-threshold-tokens", str(disagg_threshold if disagg else 0)]
        for i, port in enumerate(router_ports):  # the first keeps the name (and log) of a single router
            supervisor.start(f"router-{i}" if i else "router", "services.router", [*router_args, "--port", str(port)])
        if prometheus:  # before the workers: it sees each one join
            _start_prometheus(supervisor, prometheus_binary, log_dir / "prometheus", prometheus_port,
                              prometheus_scrape_interval_s, tls("client"))  # fmt: skip
        pools = [f"{engine}_prefill"] * prefill_workers + [f"{engine}_decode"] * decode_workers
        triton_models = pools if disagg else [engine] * workers
        for i, (triton_model, cpus) in enumerate(zip(triton_models, _worker_cpus(len(triton_models)), strict=True)):
            worker_args = [*worker_common, "--triton-model", triton_model, "--engine-args", engine_args]
            worker_args += ["--cpus", cpus]
            supervisor.start(f"worker-{i}", "services.worker", worker_args)
        supervisor.start(
            "gateway",
            "services.gateway",
            [
                *common,
                *_flags(tls("gateway")),
                "--http-port",
                str(http_port),
                "--grpc-port",
                str(grpc_port),
                "--router-address",
                ",".join(f"{host}:{port}" for port in router_ports),
                "--models",
                json.dumps([model]),
                "--procs",
                str(gateway_procs),
                "--route-in-process-below",
                str(route_in_process_below),
            ],
        )
        if planner:
            worker_args = [*worker_common, "--engine-args", engine_args]
            metrics_urls = json.dumps([f"{gateway_url}/metrics"])
            planner_argv = [*common, *_flags(tls("planner")), "--port", str(planner_port), "--profile",
                            str(planner_profile), "--gateway-metrics", metrics_urls, "--engine", engine,
                            "--worker-args", shlex.join(worker_args), "--log-dir", str(log_dir),
                            *shlex.split(planner_args)]  # fmt: skip
            supervisor.start("planner", "services.planner", planner_argv)
        _wait_ready(supervisor, f"{gateway_url}/health", ready_timeout_s, verify=client_verify)
        prometheus_url = f"http://127.0.0.1:{prometheus_port}" if prometheus else None
        if prometheus_url:
            _wait_ready(supervisor, f"{prometheus_url}/-/ready", 60.0, what="starting Prometheus")
        # Last, once the services it forwards to listen.
        rest_off = rest_front.unavailable_reason()
        # With the mesh's certificates it serves HTTPS with its own.
        rest_url = None if rest_off else f"{'https' if tls_dir else 'http'}://{host}:{rest_port}"
        if rest_off is None:
            grpc_addresses = {"gateway": grpc_port, "router": router_port, "kvindex": kvindex_port}
            if planner:
                grpc_addresses["planner"] = planner_port
            backends = {k: f"{host}:{v}" for k, v in grpc_addresses.items()}
            rest_argv = rest_front.argv(f"{host}:{rest_port}", tls=tls("rest"), expose_internal=rest_internal,
                                        **backends)  # fmt: skip
            supervisor.start_program("rest", rest_argv)
            verify = trusting(tls_dir / f"{CA}.crt") if tls_dir else True
            _wait_ready(supervisor, f"{rest_url}/healthz", 30.0, what="starting the REST front", verify=verify)
        else:
            console.print(f"[yellow]REST is off: {rest_off}[/]; gRPC and OpenAI HTTP are unaffected")
        _print_endpoints(
            host, gateway_url, grpc_port, rest_url, router_ports, kvindex_port, masked(redis_url), Path(model).name,
            log_dir, planner_port if planner else None, admin_key if auth_on else None,
            _curl_tls(tls_dir, client_cert=not auth_on) if tls_dir else "", prometheus_url,
        )  # fmt: skip
        _supervise(supervisor, redis)
    except KeyboardInterrupt:
        console.print("stopping…")
    finally:
        supervisor.stop()
        if redis:
            redis.stop()
        leftovers = [p.name for p in Path("/dev/shm").glob("triton_python_backend_shm_region_*")]
        if leftovers:
            console.print(f"[yellow]left in /dev/shm by some Triton: {', '.join(leftovers)}[/]")
        console.print("stopped.")


def _tls_in(tls_dir: Path | None):
    """`name` → its files in the directory, or None everywhere when TLS is off."""
    return lambda name: MutualTls.in_dir(tls_dir, name) if tls_dir else None


def _flags(tls: MutualTls | None) -> list[str]:
    return tls.flags() if tls else []


def _start_prometheus(
    supervisor: Supervisor, binary: Path, directory: Path, port: int, interval_s: float, tls: MutualTls | None
) -> None:
    """Its service discovery (kvmesh/prometheus_sd.py, a process of its own), then Prometheus."""
    config_file, targets = prometheus_server.prepare(directory, interval_s, tls)
    sd_args = ["--out", str(targets), "--interval-s", str(interval_s), *_flags(tls)]
    supervisor.start("prometheus-sd", "kvmesh.prometheus_sd", sd_args)
    supervisor.start_program("prometheus", prometheus_server.argv(binary, config_file, port, directory / "data"))


def _worker_cpus(workers: int) -> list[str]:
    """One worker gets every core; several share them out, one core each in turn (a vLLM engine
    on cores it shares with another engine's OpenMP threads would stall both)."""
    cores = sorted(os.sched_getaffinity(0))
    if workers == 1:
        contiguous = cores == list(range(cores[0], cores[-1] + 1))
        return [f"{cores[0]}-{cores[-1]}" if contiguous else ",".join(map(str, cores))]
    return [str(cores[i % len(cores)]) for i in range(workers)]


def _supervise(supervisor: Supervisor, redis: RedisServer | None) -> None:
    """Restart a process that dies, after a backoff that grows while it keeps crashing
    (supervisor.Backoff), never giving up: one crashing service must not take the mesh down, and
    each crash is told with the end of its log. Our own Redis comes back empty: the services
    re-register and kvindex rebuilds the index from the engines' replay buffers."""
    while True:
        time.sleep(0.25)
        if redis and redis.process and redis.process.poll() is not None:
            console.print(f"[yellow]redis-server exited with code {redis.process.returncode}; restarting it[/]")
            redis.start()
        for dead in supervisor.newly_dead():
            in_a_row = f", {dead.crashes_in_a_row} crashes in a row" if dead.crashes_in_a_row > 1 else ""
            console.print(
                f"[yellow]{dead.name} exited with code {dead.process.returncode}{in_a_row}; restarting it in "
                f"{supervisor.backoff.delay_s(dead.crashes_in_a_row):.1f}s[/] ({dead.log}, last lines):\n"
                + escape(tail(dead.log, 10))  # a log's brackets are not markup
            )
        for restarted in supervisor.restart_due():
            console.print(f"{restarted.name} restarted (restart {restarted.restarts})")


def _wait_ready(
    supervisor: Supervisor,
    health_url: str,
    timeout_s: float,
    what: str = "loading the model into Triton + vLLM",
    verify: ssl.SSLContext | bool = True,
) -> None:
    start = time.monotonic()
    with console.status("") as status:
        while not http_ok(health_url, verify):
            if (dead := supervisor.dead()) is not None:
                console.print(f"[red]{dead.name} exited with code {dead.process.returncode}[/]:\n{tail(dead.log)}")
                raise typer.Exit(1)
            elapsed = time.monotonic() - start
            if elapsed > timeout_s:
                console.print(f"[red]not ready after {timeout_s:.0f}s[/]; logs in {supervisor.log_dir}")
                raise typer.Exit(1)
            status.update(f"{what} (first start ~1 min)… {elapsed:.0f}s")
            time.sleep(0.5)
    console.print(f"[green]ready[/] in {time.monotonic() - start:.0f}s")


def _curl_tls(tls_dir: Path, client_cert: bool) -> str:
    """curl's options to trust the mesh's CA, and to show the client certificate when the gateway asks for one."""
    options = f"--cacert {tls_dir / f'{CA}.crt'}"
    return options + (f" --cert {tls_dir / 'client.crt'} --key {tls_dir / 'client.key'}" if client_cert else "")


def _print_endpoints(host, gateway_url, grpc_port, rest_url, router_ports, kvindex_port, redis_url, model, log_dir,
                     planner_port=None, admin_key=None, curl_tls="", prometheus_url=None):  # fmt: skip
    console.print(f"  OpenAI HTTP  {gateway_url}/v1   (health /health, metrics /metrics)")
    tls_note = " (TLS)" if gateway_url.startswith("https") else ""
    console.print(f"  gRPC         {host}:{grpc_port}{tls_note}   kvmesh.v1.Inference, kvmesh.v1.Models")
    if rest_url:
        console.print(f"  REST         {rest_url}/v1/...   every service (OpenAPI {rest_url}/openapi.json)")
    for port in router_ports:
        console.print(f"  router       {host}:{port}   kvmesh.v1.Router")
    console.print(f"  kvindex      {host}:{kvindex_port}   kvmesh.v1.KvIndex")
    if planner_port:
        console.print(f"  planner      {host}:{planner_port}   kvmesh.v1.Planner")
    console.print(f"  redis        {redis_url}")
    if prometheus_url:
        console.print(f"  prometheus   {prometheus_url}   targets from the registry ({log_dir}/prometheus)")
    console.print(f"  logs         {log_dir}")
    if admin_key:
        console.print(f"  auth         on; the admin key, shown once ({ADMIN_KEY_ENV}): {admin_key}", highlight=False)
        console.print(
            f"               export {ADMIN_KEY_ENV}=...; `kvmesh keys create NAME` makes users' keys (docs/security.md)"
        )
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "What is the capital of France?"}]})
    console.print("Try:", style="bold")
    console.print(
        f"curl -s {curl_tls + ' ' if curl_tls else ''}{gateway_url}/v1/chat/completions"
        " -H 'Content-Type: application/json'"
        + (f' -H "Authorization: Bearer ${ADMIN_KEY_ENV}"' if admin_key else "")  # the key itself: once, above
        + f" -d '{body}'",
        soft_wrap=True,
        highlight=False,
    )
    console.print("Ctrl-C stops everything.")


ROUTER_ADDRESS = f"{default(CommonSettings, 'host')}:{default(RouterSettings, 'port')}"


def status(
    router: str = typer.Option(ROUTER_ADDRESS, help="the router's address"),
    tls_dir: Path = typer.Option(None, help="the mesh's `kvmesh certs dev` directory (its client certificate)"),
    admin_key: str = typer.Option("", envvar=ADMIN_KEY_ENV, help="for a router with auth on: an admin key"),
) -> None:
    """Live workers and their load, as the router sees them."""
    client = _tls_in(tls_dir)("client")
    try:
        with blocking_channel(router, client) as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            reply = stub.Workers(router_pb2.WorkersRequest(), timeout=3, metadata=bearer(admin_key))
    except grpc.RpcError as e:
        console.print(f"[red]router at {router}: {e.details()}[/]")
        raise typer.Exit(1) from None
    table = Table("worker", "model", "role", "triton", "in flight", "capacity", "prefill/decode blocks", "lease")
    for w in reply.workers:
        r = w.record
        table.add_row(
            r.id,
            r.model,
            worker_pb2.Role.Name(r.role).removeprefix("ROLE_").lower(),
            r.triton_grpc_address,
            str(w.in_flight),
            str(r.capacity),
            f"{w.prefill_blocks}/{w.decode_blocks}",
            f"{w.lease_remaining_ms / 1000:.1f}s",
        )
    console.print(table if reply.workers else "no live workers")


def add_commands(app: typer.Typer) -> None:
    app.command()(up)
    app.command()(status)
