"""The mesh's own overhead: OpenAI chat completions through the whole mesh onto simulated workers
at speed-up 1000 (engine time ≈ 0), streaming and not, at several concurrencies.

    .venv/bin/python -m bench.overhead [--levels 1 16 64] [--requests-per-slot 25]

Prompts are ~830 tokens: one of 4 shared system prompts plus a unique user suffix, never
repeated; max_tokens 16. Reports requests/s, e2e p50/p99, TTFT p50 and the CPU milliseconds per
request of every mesh process (gateway, router, kvindex, workers with their Triton servers and
engines; not the load generator), next to NVIDIA Dynamo 1.6.1's figures measured on this
machine with the same workload (from the issue). Also times the official `openai` client at
concurrency 1, streaming, to show there is no per-request stall.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import openai

from bench.common import GPU_LIKE, RESULTS, save, tree_cpu_s
from bench.loadgen import run_level
from kvmesh.cli.local_mesh import LocalMesh

DYNAMO = {1: {"requests_per_s": 192, "e2e_ms_p50": 5.1, "cpu_ms_per_request": 6.0}, 16: {"requests_per_s": 485},
          64: {"requests_per_s": 489}}  # fmt: skip
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--requests-per-slot", type=int, default=25)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    engine_args = {"timing": {**GPU_LIKE, "speedup": 1000}}
    mesh = LocalMesh.start(
        RESULTS / "overhead",
        extra_args=("--engine", "sim", "--workers", str(args.workers), "--engine-args", json.dumps(engine_args)),
    )
    results: dict = {"workers": args.workers, "dynamo_1_6_1": DYNAMO, "levels": []}
    url = f"{mesh.http}/v1/chat/completions"
    offset = 0
    try:
        asyncio.run(run_level(url, bodies(mesh.model, 20, False, offset=-100), 4))  # warm-up
        for stream in (False, True):
            for c in args.levels:
                n = max(c * args.requests_per_slot, 200)
                cpu_before = tree_cpu_s(mesh.process.pid)
                level = asyncio.run(run_level(url, bodies(mesh.model, n, stream, offset), c))
                offset += n
                summary = level.summary()
                summary["stream"] = stream
                cpu_after = tree_cpu_s(mesh.process.pid)
                cpu_s = sum(cpu_after.values()) - sum(cpu_before.values())
                summary["cpu_ms_per_request"] = round(cpu_s * 1000 / n, 2)
                results["levels"].append(summary)
                print(json.dumps(summary), flush=True)
        times = asyncio.run(openai_client_stream(mesh.http, mesh.model, 100))
        results["openai_client_stream_c1_e2e_ms"] = {"p50": round(times[50], 2), "p99": round(times[98], 2)}
    finally:
        mesh.stop()
    print("\nstream | c  | req/s (× Dynamo) | e2e p50 / p99 ms | TTFT p50 ms | CPU ms/req")
    for s in results["levels"]:
        dyn = DYNAMO.get(s["concurrency"], {}).get("requests_per_s")
        ratio = f"({s['requests_per_s'] / dyn:.2f}×)" if dyn else ""
        print(
            f"{'yes' if s['stream'] else 'no ':<6} | {s['concurrency']:<2} | {s['requests_per_s']:.0f} {ratio} | "
            f"{s['e2e_ms_p50']:.1f} / {s['e2e_ms_p99']:.1f} | {s['ttft_ms_p50']:.1f} | {s['cpu_ms_per_request']}"
        )
    print(f"openai client, streaming, c=1: e2e {results['openai_client_stream_c1_e2e_ms']}")
    save("overhead", results)


if __name__ == "__main__":
    main()
