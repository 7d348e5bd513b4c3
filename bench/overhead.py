"""The mesh's own overhead: OpenAI chat completions through the whole mesh onto simulated workers
at speed-up 1000 (engine time ≈ 0), streaming and not, at several concurrencies.

    .venv/bin/python -m bench.overhead [--levels 1 16 64] [--requests-per-slot 25] [--wrk-seconds 8] [--profile DIR]

Prompts are ~830 tokens: one of 4 shared system prompts plus a unique user suffix, never
repeated; max_tokens 16. Reports requests/s, e2e p50/p99, TTFT p50 and the CPU milliseconds per
request of every mesh process (gateway, router, kvindex, workers with their Triton servers and
engines; not the load generator), in all and by process. Also times the official `openai` client
at concurrency 1, streaming, to show there is no per-request stall.

Each level runs twice with two load generators. The Python one (bench/loadgen.py) times TTFT and
e2e, but spends CPU milliseconds a request of the two cores the mesh runs on; wrk (bench/wrk.py,
native, e2e only) then measures the rate the mesh sustains with the cores to itself. `--profile DIR`:
a py-spy flame graph (SVG) of every Python process of the mesh for each level. Writes
bench/results/overhead.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
import psutil

from bench import wrk
from bench.common import GPU_LIKE, RESULTS, cpu_since, save, service_of, tree_cpu_s
from bench.loadgen import run_level
from kvmesh.cli.local_mesh import LocalMesh

TOPICS = ["astronomy", "cooking", "tax law", "marine biology"]


def system_prompt(topic: str) -> str:
    rules = " ".join(f"Rule {i}: when asked about {topic}, be precise and cite the basics." for i in range(45))
    return f"You are an expert assistant on {topic}. {rules}"


def bodies(model: str, n: int, stream: bool, offset: int) -> list[dict]:
    out = []
    for i in range(n):
        body = {
            "model": model,
            "messages": [
                {"role": "system", "content": system_prompt(TOPICS[i % len(TOPICS)])},
                {"role": "user", "content": f"Question {offset + i}: what matters most here, and why?"},
            ],
            "max_tokens": 16,
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        out.append(body)
    return out


async def openai_client_stream(base: str, model: str, n: int) -> list[float]:
    client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    times = []
    for body in bodies(model, n, True, offset=10**6):
        start = time.perf_counter()
        stream = await client.chat.completions.create(
            model=model, messages=body["messages"], max_tokens=16, stream=True
        )
        async for _ in stream:
            pass
        times.append((time.perf_counter() - start) * 1000)
    await client.close()
    return sorted(times)


PROFILED = ("gateway", "router", "kvindex", "triton_python_backend_stub")


def start_profiles(mesh: LocalMesh, prefix: Path) -> list[subprocess.Popen]:
    """py-spy on every Python process of the mesh until stop_profiles; an SVG flame graph each."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    py_spy = Path(sys.executable).with_name("py-spy")
    spies = []
    for p in psutil.Process(mesh.process.pid).children(recursive=True):
        if (service := service_of(p)) in PROFILED:
            out = f"{prefix}-{service}-{p.pid}.svg"
            argv = [str(py_spy), "record", "--nonblocking", "-r", "100", "-o", out, "-p", str(p.pid)]
            spies.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return spies


def stop_profiles(spies: list[subprocess.Popen]) -> None:
    for spy in spies:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    for spy in spies:
        spy.wait(30)


def print_table(levels: list[dict]) -> None:
    print("\nstream | c  | req/s | e2e p50 / p99 ms | TTFT p50 ms | CPU ms/req", end="")
    print(" | wrk: req/s | e2e p50 / p99 ms | CPU ms/req")
    for s in levels:
        row = [
            "yes   " if s["stream"] else "no    ",
            f"{s['concurrency']:<2}",
            f"{s['requests_per_s']:.0f}",
            f"{s['e2e_ms_p50']:.1f} / {s['e2e_ms_p99']:.1f}",
            f"{s['ttft_ms_p50']:.1f}",
            str(s["cpu_ms_per_request"]),
        ]
        if native := s.get("wrk"):
            e2e = f"{native['e2e_ms_p50']:.1f} / {native['e2e_ms_p99']:.1f}"
            row += [f"{native['requests_per_s']:.0f}", e2e, str(native["cpu_ms_per_request"])]
        print(" | ".join(row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--requests-per-slot", type=int, default=25)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--wrk-seconds", type=int, default=8, help="each level's wrk run (0: none)")
    parser.add_argument("--profile", type=Path, help="py-spy flame graphs of every Python process, per level, here")
    args = parser.parse_args()
    if args.wrk_seconds and not wrk.available():
        raise SystemExit("wrk is not installed: apt-get install wrk (scripts/setup.sh does), or --wrk-seconds 0")
    engine_args = {"timing": {**GPU_LIKE, "speedup": 1000}}
    mesh = LocalMesh.start(
        RESULTS / "overhead",
        extra_args=("--engine", "sim", "--workers", str(args.workers), "--engine-args", json.dumps(engine_args)),
    )
    results: dict = {"workers": args.workers, "levels": []}
    url = f"{mesh.http}/v1/chat/completions"
    offset = 0
    try:
        asyncio.run(run_level(url, bodies(mesh.model, 20, False, offset=-100), 4))  # warm-up
        for stream in (False, True):
            for c in args.levels:
                n = max(c * args.requests_per_slot, 200)
                cpu_before = tree_cpu_s(mesh.process.pid, service_of)
                loadgen_before = psutil.Process().cpu_times()
                spies = (
                    start_profiles(mesh, args.profile / f"{'stream' if stream else 'plain'}-c{c}")
                    if args.profile
                    else []
                )
                level = asyncio.run(run_level(url, bodies(mesh.model, n, stream, offset), c))
                loadgen_after = psutil.Process().cpu_times()
                stop_profiles(spies)
                offset += n
                summary = level.summary()
                summary["stream"] = stream
                cpu_s = cpu_since(mesh.process.pid, cpu_before, service_of)
                summary["cpu_ms_per_request"] = round(sum(cpu_s.values()) * 1000 / n, 2)
                by_process = sorted(((round(v * 1000 / n, 2), k) for k, v in cpu_s.items()), reverse=True)
                summary["cpu_ms_per_request_by_process"] = {k: v for v, k in by_process if v >= 0.05}
                # It shares the two cores with the mesh.
                loadgen_s = sum(loadgen_after[:2]) - sum(loadgen_before[:2])
                summary["load_generator_cpu_ms_per_request"] = round(loadgen_s * 1000 / n, 2)
                if args.wrk_seconds:
                    # Enough bodies for 1,000 requests/s, so that none repeats.
                    n = int(args.wrk_seconds * 1000)
                    cpu_before = tree_cpu_s(mesh.process.pid, service_of)
                    native = wrk.run(url, bodies(mesh.model, n, stream, offset), c, args.wrk_seconds)
                    offset += n
                    cpu_s = cpu_since(mesh.process.pid, cpu_before, service_of)
                    native["cpu_ms_per_request"] = round(sum(cpu_s.values()) * 1000 / native["requests"], 2)
                    summary["wrk"] = native
                results["levels"].append(summary)
                print(json.dumps(summary), flush=True)
        times = asyncio.run(openai_client_stream(mesh.http, mesh.model, 100))
        results["openai_client_stream_c1_e2e_ms"] = {"p50": round(times[50], 2), "p99": round(times[98], 2)}
    finally:
        mesh.stop()
    print_table(results["levels"])
    print(f"openai client, streaming, c=1: e2e {results['openai_client_stream_c1_e2e_ms']}")
    save("overhead", results)


if __name__ == "__main__":
    main()
