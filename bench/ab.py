"""Two revisions of kvmesh side by side: the same-run A/B behind a change's figures.

    .venv/bin/python -m bench.ab <rev A> <rev B> [--levels 1 16 64] [--rounds 3] [--wrk-seconds 4]
        [--modes plain stream]

Each revision is checked out (a detached git worktree, removed afterwards) and started with
`kvmesh up --engine sim --workers 2` (speed-up 1000, bench.overhead's engine) in a loopback-only
network namespace of its own; both run throughout. Under wrk, with bench.overhead's prompts (never
repeated), the arms alternate level by level and mode by mode, their order swapped each round.
Prints each arm's req/s, e2e p50 and CPU-ms a request (every process of its mesh, and by
process), and the ratios B / A taken round by round: median [range]. Needs root (namespaces).
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench.common import GPU_LIKE, cell, save, spread
from bench.overhead import Side, kvmesh_side, measure
from tests.support import hosts

METRICS = ("requests_per_s", "e2e_ms_p50", "cpu_ms_per_request")


@contextlib.contextmanager
def checkout(rev: str, where: Path) -> Iterator[Path]:
    """`rev` of this repository at `where`, sharing its built binaries (build/)."""
    subprocess.run(["git", "-C", str(hosts.ROOT), "worktree", "add", "--detach", "-f", str(where), rev],
                   check=True, capture_output=True)  # fmt: skip
    try:
        (where / "build").symlink_to(hosts.ROOT / "build")
        yield where
    finally:
        subprocess.run(["git", "-C", str(hosts.ROOT), "worktree", "remove", "--force", str(where)], capture_output=True)


def alternate(arms: dict[str, Side], args: argparse.Namespace) -> list[dict]:
    runs, offset = [], 0
    for side in arms.values():  # warm-up
        for mode in args.modes:
            offset += 2000
            measure(side, "wrk", mode, 4, 2000, offset, 1)
    for rnd in range(1, args.rounds + 1):
        for c in args.levels:
            for mode in args.modes:
                for name, side in list(arms.items())[:: 1 if rnd % 2 else -1]:
                    n = args.wrk_seconds * 2000  # bodies for 2,000 requests/s, none repeated
                    figures = measure(side, "wrk", mode, c, n, offset, args.wrk_seconds)
                    offset += n
                    runs.append({"round": rnd, "arm": name, "mode": mode, "concurrency": c, **figures})
                    print(f"round {rnd} {mode} c={c} {name}: {figures['requests_per_s']:.0f} req/s, e2e p50 "
                          f"{figures['e2e_ms_p50']:.1f} ms, {figures['cpu_ms_per_request']:.2f} CPU-ms/req "
                          f"{figures['cpu_ms_per_request_by_process']}", flush=True)  # fmt: skip
    return runs


def summarize(runs: list[dict]) -> list[dict]:
    rows = []
    for mode, c in dict.fromkeys((r["mode"], r["concurrency"]) for r in runs):
        level = [r for r in runs if (r["mode"], r["concurrency"]) == (mode, c)]
        arm = {a: {r["round"]: r for r in level if r["arm"] == a} for a in "AB"}
        row: dict = {"mode": mode, "concurrency": c}
        for a in "AB":
            row[a] = {m: spread([r[m] for r in arm[a].values()]) for m in METRICS}
            processes = {p for r in arm[a].values() for p in r["cpu_ms_per_request_by_process"]}
            row[a]["cpu_by_process"] = {
                p: spread([r["cpu_ms_per_request_by_process"].get(p, 0.0) for r in arm[a].values()])["median"]
                for p in sorted(processes)
            }
        row["ratio"] = {m: spread([arm["B"][k][m] / arm["A"][k][m] for k in arm["A"]]) for m in METRICS}
        rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    print("\n| mode | c | req/s A | req/s B | B / A | e2e p50 ms A | B | B / A | CPU-ms/req A | B | B / A |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        line = [row["mode"], str(row["concurrency"])]
        for metric, digits in zip(METRICS, (0, 2, 2), strict=True):
            line += [cell(row["A"][metric], digits), cell(row["B"][metric], digits), cell(row["ratio"][metric], 3)]
        print("| " + " | ".join(line) + " |")
    for row in rows:
        for a in "AB":
            print(f"CPU-ms/req by process, {row['mode']} c={row['concurrency']} {a}: {row[a]['cpu_by_process']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="revision A (the baseline): a commit, branch or tag")
    parser.add_argument("b", help="revision B")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--wrk-seconds", type=int, default=4)
    parser.add_argument("--modes", nargs="+", choices=["plain", "stream"], default=["plain", "stream"])
    args = parser.parse_args()
    engine_args = {"timing": {**GPU_LIKE, "speedup": 1000}}
    with tempfile.TemporaryDirectory(prefix="kvmesh-ab-") as scratch, contextlib.ExitStack() as stack:
        arms = {}
        for name, rev in (("A", args.a), ("B", args.b)):
            tree = stack.enter_context(checkout(rev, Path(scratch) / name))
            host = stack.enter_context(hosts.loopback())
            arms[name] = stack.enter_context(kvmesh_side(host, Path(scratch) / f"logs-{name}", 2, engine_args, tree))
        runs = alternate(arms, args)
    rows = summarize(runs)
    save("ab", {"a": args.a, "b": args.b, "args": vars(args), "runs": runs, "summary": rows})
    print_table(rows)


if __name__ == "__main__":
    main()
