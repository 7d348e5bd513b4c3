"""What the hop between hosts costs: bench.overhead's workload (OpenAI chat completions, ~830-token
prompts never repeated, 16 tokens, not streaming, onto simulated workers at speed-up 1000) through
the mesh on separate hosts against the same services all on one loopback, in the same run.

    .venv/bin/python -m bench.multihost [--rounds 3] [--requests 300] [--levels 1 16]

Needs root. tests/support/hosts.py makes the hosts (network namespaces on one bridge: Redis,
kvindex and router on one, gateway and REST front on another, a worker on each of two more) and a
namespace with only loopback where the same launcher starts the same services on 127.0.0.1; both
meshes run throughout, with the same flags (API keys on: the requests show the admin key, so both
sides pay the front door's cost). The load generator (bench/loadgen.py) runs on the
client host, resp. in the loopback namespace. The sides take turns level by level, their order
swapped each round; the rounds are pooled. Prints requests/s and e2e p50 per side and level and
their ratios (multi-host / loopback); writes bench/results/multihost.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from dataclasses import asdict

from bench.common import GPU_LIKE, RESULTS, save
from bench.loadgen import LevelResult, RequestTiming, run_level
from bench.overhead import bodies
from tests.support import hosts

SIDES = ("multihost", "loopback")


def load(mesh: hosts.Mesh, url: str, n: int, concurrency: int, offset: int) -> LevelResult:
    """One level of load from inside the mesh's client host (this process reaches none of the hosts)."""
    argv = [sys.executable, "-m", "bench.multihost", "load", "--url", url, "--model", mesh.model, "--requests", str(n),
            "--concurrency", str(concurrency), "--offset", str(offset)]  # fmt: skip
    done = mesh.placement.client.run(argv, env=mesh.client_env, timeout_s=600)
    if done.returncode != 0:
        raise RuntimeError(f"the load generator failed: {done.stderr[-2000:]}")
    raw = json.loads(done.stdout)
    timings = [RequestTiming(**t) for t in raw["timings"]]
    return LevelResult(concurrency, raw["requests"], raw["wall_s"], timings)


def _load_here(args: argparse.Namespace) -> None:
    requests = bodies(args.model, args.requests, False, args.offset)
    level = asyncio.run(run_level(args.url, requests, args.concurrency, hosts.headers(hosts.admin_key())))
    timings = [asdict(t) for t in level.timings]
    print(json.dumps({"requests": level.requests, "wall_s": level.wall_s, "timings": timings}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=300, help="per side, level and round")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args()
    hosts.require_root()
    engine_args = {"timing": {**GPU_LIKE, "speedup": 1000}}
    pooled: dict[tuple[str, int], LevelResult] = {}
    with contextlib.ExitStack() as stack:
        apart = hosts.Placement.apart(stack.enter_context(hosts.network()))
        together = hosts.Placement.together(stack.enter_context(hosts.loopback()))
        meshes = {
            side: stack.enter_context(hosts.mesh(placement, RESULTS / "multihost" / side, ("sim", "sim"), engine_args))
            for side, placement in zip(SIDES, (apart, together), strict=True)
        }
        url = {side: f"{mesh.http}/v1/chat/completions" for side, mesh in meshes.items()}
        offset = 0
        for side, mesh in meshes.items():  # warm-up
            load(mesh, url[side], 20, 4, offset=-100)
        for r in range(args.rounds):
            for c in args.levels:
                for side in SIDES if r % 2 == 0 else SIDES[::-1]:
                    mesh = meshes[side]
                    level = load(mesh, url[side], args.requests, c, offset)
                    offset += args.requests
                    if (side, c) in pooled:
                        pooled[side, c].merge(level)
                    else:
                        pooled[side, c] = level
                    print(f"round {r + 1} c={c} {side}: {level.requests / level.wall_s:.1f} req/s", flush=True)
    results: dict = {"rounds": args.rounds, "requests": args.requests, "levels": []}
    print("\nc  | req/s multi-host / loopback (ratio) | e2e p50 ms multi-host / loopback (ratio)")
    for c in args.levels:
        far, near = pooled["multihost", c].summary(), pooled["loopback", c].summary()
        ratios = {k: round(far[k] / near[k], 3) for k in ("requests_per_s", "e2e_ms_p50")}
        results["levels"].append({"concurrency": c, "multihost": far, "loopback": near, "ratio": ratios})
        print(f"{c:<2} | {far['requests_per_s']:.1f} / {near['requests_per_s']:.1f} ({ratios['requests_per_s']:.3f}) | "
              f"{far['e2e_ms_p50']:.1f} / {near['e2e_ms_p50']:.1f} ({ratios['e2e_ms_p50']:.3f})")  # fmt: skip
    save("multihost", results)


if __name__ == "__main__":
    if sys.argv[1:2] == ["load"]:
        parser = argparse.ArgumentParser()
        for flag in ("--url", "--model"):
            parser.add_argument(flag, required=True)
        for flag in ("--requests", "--concurrency", "--offset"):
            parser.add_argument(flag, type=int, required=True)
        _load_here(parser.parse_args(sys.argv[2:]))
    else:
        main()
