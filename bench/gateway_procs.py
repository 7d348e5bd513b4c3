"""What a gateway of two processes (`--procs 2`) gives and costs against one (`--procs 1`): req/s
and CPU a request, same run, same mesh, same client, alternating.

    flock /tmp/kvmesh-integration.lock .venv/bin/python -m bench.gateway_procs \\
        [--rounds 3] [--concurrency 64] [--wrk-seconds 5] [--procs 2]

The mesh: `kvmesh up --engine sim --workers 2` with `overhead`'s engines (GPU-like timing at
speed-up 1000: engine time ≈ 0) on loopback, and beside it two more gateways of that mesh (same
Redis and router, their own processes and ports), started alike but for `--procs 1` / `--procs 2`.
Prompts are `overhead`'s (~830 tokens, never repeated), max_tokens 16, not streamed and streamed.

Each round runs wrk (bench/wrk.py; native, so the cores stay the mesh's) for `--wrk-seconds` at
`--concurrency` on one arm, then the other, each mode; the arms' order is swapped each round. The
two arms' ratio (procs N / procs 1) is taken within a round, then its median and range over rounds.

CPU: user + system of every process of the mesh (kvmesh up's tree: Redis, router, kvindex, the
workers' Triton and engines, its own idle gateway) and of both gateways, a request, split as
`gateway` (every process of the arm under load), `idle gateways` (the others: their idle cost
falls on both arms alike), `redis-server`, `router`, …. Writes bench/results/gateway_procs.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench import wrk
from bench.common import GPU_LIKE, RESULTS, cell, save, service_of, spread, start_gateway, stop, tree_cpu_s
from bench.overhead import bodies
from kvmesh.cli.local_mesh import LocalMesh
from tests.support.waiting import wait_for

MODES = {"plain": False, "stream": True}
METRICS = ("requests_per_s", "e2e_ms_p50", "cpu_ms_per_request", "gateway_cpu_ms_per_request")


@dataclass
class Arm:
    procs: int
    pid: int  # the parent: its children are the arm's too
    url: str  # the chat completions endpoint


def start_arm(mesh: LocalMesh, procs: int, log_dir: Path) -> tuple[Arm, subprocess.Popen]:
    log = log_dir / f"gateway-procs-{procs}.log"
    process, base = start_gateway(mesh, log, "--procs", str(procs))
    try:
        ready = lambda: log.read_text().count("gateway ready") == procs  # noqa: E731
        wait_for(ready, timeout_s=120, what=f"{procs} gateway processes")
    except BaseException:
        stop(process)
        raise
    return Arm(procs, process.pid, f"{base}/v1/chat/completions"), process


def cpu_s(roots: list[int], serving: int) -> dict[str, float]:
    """CPU seconds so far of every process under `roots`, by part; `serving`: the arm under load's parent."""

    def part(process: psutil.Process) -> str:
        if serving in (process.pid, process.ppid()):
            return "gateway"
        name = service_of(process)
        return "idle gateways" if name == "gateway" else name

    return tree_cpu_s(roots, part)


class Bench:
    def __init__(self, mesh: LocalMesh, arms: list[Arm], args: argparse.Namespace):
        self.mesh, self.arms, self.args = mesh, arms, args
        self.roots = [mesh.process.pid, *(a.pid for a in arms)]
        self.offset = 0  # prompts never repeat, across arms, modes and rounds
        self.runs: list[dict] = []

    def run(self, arm: Arm, mode: str, rnd: int, seconds: int) -> None:
        """One wrk run; kept unless `rnd` is 0 (warm-up)."""
        work = bodies(self.mesh.model, seconds * 3000, MODES[mode], self.offset)  # enough for 3,000 req/s
        self.offset += len(work)
        before = cpu_s(self.roots, arm.pid)
        figures = wrk.run(arm.url, work, self.args.concurrency, seconds)
        after = cpu_s(self.roots, arm.pid)
        spent = {k: v - before.get(k, 0.0) for k, v in after.items()}
        n = figures["requests"]
        by_part = sorted(((round(v * 1000 / n, 3), k) for k, v in spent.items()), reverse=True)
        figures |= {
            "cpu_ms_per_request": round(sum(spent.values()) * 1000 / n, 3),
            "gateway_cpu_ms_per_request": round(spent.get("gateway", 0.0) * 1000 / n, 3),
            "cpu_ms_per_request_by_part": {k: v for v, k in by_part if v >= 0.005},
        }
        if not rnd:
            return
        self.runs.append({"round": rnd, "procs": arm.procs, "mode": mode} | figures)
        print(f"round {rnd} {mode} procs {arm.procs}: {figures['requests_per_s']:.0f} req/s, e2e p50 "
              f"{figures['e2e_ms_p50']:.1f} ms, {figures['cpu_ms_per_request']:.2f} CPU-ms/req (gateway "
              f"{figures['gateway_cpu_ms_per_request']:.2f}), {figures['failed']} failed", flush=True)  # fmt: skip

    def alternate(self) -> None:
        for mode in MODES:  # warm-up: tokenizer caches, connections, the engines' first steps
            for arm in self.arms:
                self.run(arm, mode, 0, 2)
        for rnd in range(1, self.args.rounds + 1):
            for mode in MODES:
                for arm in self.arms if rnd % 2 else self.arms[::-1]:
                    self.run(arm, mode, rnd, self.args.wrk_seconds)


def summarize(runs: list[dict], procs: tuple[int, int]) -> list[dict]:
    """Per mode: each arm's metrics over rounds, and the ratios procs N / procs 1 taken round by round."""
    rows = []
    for mode in MODES:
        by_arm = {p: {r["round"]: r for r in runs if r["mode"] == mode and r["procs"] == p} for p in procs}
        row: dict = {"mode": mode}
        for p, rounds in by_arm.items():
            row[f"procs {p}"] = {m: spread([r[m] for r in rounds.values()]) for m in METRICS}
            row[f"procs {p}"]["failed"] = sum(r["failed"] for r in rounds.values())
        one, many = by_arm[procs[0]], by_arm[procs[1]]
        row["ratio"] = {m: spread([many[n][m] / one[n][m] for n in one]) for m in METRICS}
        rows.append(row)
    return rows


def print_table(rows: list[dict], procs: tuple[int, int]) -> None:
    columns = [f"procs {procs[0]}", f"procs {procs[1]}", "ratio"]
    header = ["mode"] + [f"{m} {c}" for m in ("req/s", "e2e p50 ms", "CPU-ms/req", "gateway CPU-ms/req")
                         for c in columns]  # fmt: skip
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        line = [row["mode"]]
        for metric, digits in zip(METRICS, (0, 1, 2, 2), strict=True):
            line += [cell(row[c][metric], 2 if c == "ratio" else digits) for c in columns]
        print("| " + " | ".join(line) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--wrk-seconds", type=int, default=5)
    parser.add_argument("--procs", type=int, default=2, help="the other arm's processes (the first: 1)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if not wrk.available():
        raise SystemExit("wrk is not installed: apt-get install wrk (scripts/setup.sh does)")
    engine_args = {"timing": {**GPU_LIKE, "speedup": 1000}}
    log_dir = RESULTS / "gateway_procs"
    mesh = LocalMesh.start(log_dir, extra_args=("--engine", "sim", "--workers", str(args.workers), "--engine-args",
                                                json.dumps(engine_args)))  # fmt: skip
    processes = []
    try:
        mesh.wait_for_workers(args.workers)
        arms = []
        for procs in (1, args.procs):
            arm, process = start_arm(mesh, procs, log_dir)
            arms.append(arm)
            processes.append(process)
        bench = Bench(mesh, arms, args)
        bench.alternate()
    finally:
        for process in processes:
            stop(process)
        mesh.stop()
    pair = (1, args.procs)
    summary = summarize(bench.runs, pair)
    save("gateway_procs", {"rounds": args.rounds, "concurrency": args.concurrency, "wrk_seconds": args.wrk_seconds,
                           "workers": args.workers, "cores": psutil.cpu_count(), "engine_args": engine_args,
                           "summary": summary, "runs": bench.runs})  # fmt: skip
    print_table(summary, pair)


if __name__ == "__main__":
    main()
