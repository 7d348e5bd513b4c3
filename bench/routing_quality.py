"""Routing quality on a Mooncake trace: kv-aware vs dynamo vs round-robin vs least-loaded (and any other
policy), each on a fresh mesh of N simulated workers with a fixed KV cache each, in one run; and
two bounds computed from the trace alone.

    .venv/bin/python -m bench.routing_quality [--trace bench/traces/mooncake_synthetic_trace.jsonl]
        [--workers 8] [--num-blocks 8192] [--time-scale 0.3] [--limit 1500] [--speedup 10]

Bounds: "infinite cache" (every block ever seen stays cached) and "pooled LRU" (one LRU cache
the size of all workers' caches together, seeing every request: what a router that could put
every request everywhere would get). Prints hit ratio, TTFT/ITL/E2E percentiles per policy and
the ratios to round-robin; writes bench/results/routing_quality.json and a PNG per policy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import OrderedDict
from pathlib import Path

from bench.common import GPU_LIKE, MOONCAKE_TRACE, RESULTS, save
from kvmesh.cli.local_mesh import LocalMesh
from kvmesh.replay import report, traces
from kvmesh.replay.runner import ReplayOptions, replay

SIM_BLOCK = 64


def bounds(requests: list[traces.TraceRequest], capacity_blocks: int) -> dict[str, float]:
    """Prefix hit ratios of an infinite cache and of one pooled LRU cache of `capacity_blocks`
    trace blocks, in arrival order (the last prompt token is always computed, as in vLLM)."""
    infinite: set[int] = set()
    pooled: OrderedDict[int, None] = OrderedDict()
    hits = {"infinite_cache": 0, "pooled_lru": 0}
    total = 0
    for r in requests:
        total += r.input_length
        for name, cache in (("infinite_cache", infinite), ("pooled_lru", pooled)):
            for i, h in enumerate(r.hash_ids):
                end = min((i + 1) * traces.MOONCAKE_BLOCK, r.input_length)
                if h not in cache or end >= r.input_length:
                    break
                hits[name] += end - i * traces.MOONCAKE_BLOCK
        infinite.update(r.hash_ids)
        for h in r.hash_ids:
            pooled[h] = None
            pooled.move_to_end(h)
        while len(pooled) > capacity_blocks:
            pooled.popitem(last=False)
    return {name: round(hit / total, 4) for name, hit in hits.items()}


def run_policy(policy: str, requests, args) -> tuple[dict, list]:
    timing = {**GPU_LIKE, "speedup": args.speedup}
    engine_args = {"num_blocks": args.num_blocks, "block_size": SIM_BLOCK, "timing": timing}
    mesh = LocalMesh.start(
        RESULTS / f"routing-{policy}",
        extra_args=("--engine", "sim", "--workers", str(args.workers), "--policy", policy,
                    "--engine-args", json.dumps(engine_args)),
    )  # fmt: skip
    try:
        options = ReplayOptions(time_scale=args.time_scale, max_output_tokens=args.max_output_tokens)
        outcomes, wall = asyncio.run(replay(mesh.grpc, mesh.model, requests, options))
    finally:
        mesh.stop()
    return report.summarize(outcomes, wall), outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--trace",
        type=Path,
        default=MOONCAKE_TRACE,
        help="Mooncake .jsonl or Azure .csv (only Mooncake shares prefixes)",
    )
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--num-blocks", type=int, default=8192, help=f"KV cache per worker, {SIM_BLOCK}-token blocks")
    # At 0.1× (37 req/s of 11.7k-token prompts) the two cores saturate and every policy queues for
    # seconds: that measures the machine, not the routing.
    parser.add_argument("--time-scale", type=float, default=0.3)
    parser.add_argument("--limit", type=int, default=1500)
    parser.add_argument("--speedup", type=float, default=10.0)
    parser.add_argument("--max-output-tokens", type=int, default=64)
    parser.add_argument("--policies", nargs="+", default=["kv-aware", "dynamo", "round-robin", "least-loaded"])
    args = parser.parse_args()
    requests = [r for r in traces.load(args.trace, args.limit) if r.input_length + args.max_output_tokens < 131072]
    capacity = args.workers * args.num_blocks * SIM_BLOCK // traces.MOONCAKE_BLOCK
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "bounds": bounds(requests, capacity)}
    for policy in args.policies:
        print(f"== {policy}", flush=True)
        summary, outcomes = run_policy(policy, requests, args)
        title = f"{policy} on {args.trace.name} (first {len(requests)} requests, time × {args.time_scale})"
        report.write(RESULTS, f"routing-{policy}", summary, outcomes, title)
        results[policy] = summary
        print(json.dumps(summary), flush=True)
    base = results.get("round-robin")
    print(f"\nbounds: {results['bounds']}")
    print("policy        | hit ratio (of pooled LRU) | TTFT p50 / p99 ms (× round-robin) | ITL p50 ms | errors")
    for policy in args.policies:
        s = results[policy]
        bound = results["bounds"]["pooled_lru"]  # 0 on a trace without shared prefixes
        of_bound = f"{s['prefix_hit_ratio'] / bound:.1%}" if bound else "-"
        ratio = (
            f"({s['ttft_ms']['p50'] / base['ttft_ms']['p50']:.2f} / {s['ttft_ms']['p99'] / base['ttft_ms']['p99']:.2f})"
            if base
            else ""
        )
        print(
            f"{policy:<13} | {s['prefix_hit_ratio']:.3f} ({of_bound}) | "
            f"{s['ttft_ms']['p50']:.0f} / {s['ttft_ms']['p99']:.0f} {ratio} | {s['itl_ms']['p50']:.1f} | {s['errors']}"
        )
    save("routing_quality", results)


if __name__ == "__main__":
    main()
