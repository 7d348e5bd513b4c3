"""The mesh's own overhead against NVIDIA Dynamo's: OpenAI chat completions onto simulated engines
(engine time ≈ 0) through kvmesh (`kvmesh up --engine sim`) and through Dynamo 1.6.1 (its mocker
behind its KV-routing frontend, bench/dynamo.py), in the same run, alternating.

    .venv/bin/python -m bench.overhead [--rounds 3] [--levels 1 16 64] [--requests-per-slot 10]
        [--wrk-seconds 4] [--no-dynamo] [--profile DIR]

Needs root: each side serves in a network namespace of its own with only loopback
(tests/support/hosts.py), and its load generators run in that namespace too, as the same
subprocess, so both sides see the same network. Both sides serve throughout; each round runs every
level on both sides, their order swapped each round. Medians and ranges are over rounds; a ratio
(kvmesh / Dynamo) is taken within a round, then its median and range over rounds.

Workload: prompts of ~830 tokens, one of 4 shared system prompts plus a unique question, never
repeated within the run across both sides (Dynamo serves an exact repeat at about half the CPU);
max_tokens 16. Each side has 2 simulated engines with the simulated engine's KV block size, cache
size and batch limits (Dynamo's mocker is given kvmesh's), at speed-up 1000, and routes on KV overlap.

Each level and side runs two load generators: the Python one (bench/loadgen.py; e2e and TTFT, but
it spends CPU on the two cores the servers run on) not streaming, streaming, and streaming with
quick ACKs; then wrk (bench/wrk.py; native, e2e only) not streaming and streaming. CPU: every
process of the side (kvmesh up and all it starts; Dynamo's mocker and frontend), user + system,
per request; never the load generator's.

Quick ACKs: Dynamo's frontend sends each streamed event as a small TCP segment and holds the next
one until the last is ACKed (Nagle's algorithm, by all signs). Once a keep-alive connection has
turned interactive (its second request on), Linux delays the client's ACKs (~40 ms) unless the
client re-arms TCP_QUICKACK before each read: every streamed answer but a connection's first
stalls ~40 ms. httpx (the Python load generator, the `openai` client) and wrk re-arm nothing, so
both hit it. The "stream, quick ACK" runs set `quickack 1` on the namespace's route to 127.0.0.1,
which turns delayed ACKs off for every connection over it, as re-arming TCP_QUICKACK before each
read does for one; the same for both sides.

Prints, per load generator, mode and level, both sides' requests/s, e2e p50 and CPU-ms a request
and the ratios; then the `openai` client's streaming e2e at c = 1 on each side. `--no-dynamo`:
kvmesh alone. `--profile DIR`: py-spy flame graphs (SVG) of kvmesh's Python processes during each
of its Python-load-generator runs. Writes bench/results/overhead.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import openai
import psutil

from bench import dynamo, wrk
from bench.common import GPU_LIKE, RESULTS, cell, save, service_of, spread, tree_cpu_s
from bench.loadgen import run_level
from engines.sim.engine import SimArgs
from kvmesh.api_keys import PREFIX as KEY_PREFIX
from kvmesh.auth import ADMIN_KEY_ENV, MESH_TOKEN_ENV
from kvmesh.models import DEFAULT_MODEL
from tests.support import hosts

TOPICS = ["astronomy", "cooking", "tax law", "marine biology"]
MODES = {"plain": (False, False), "stream": (True, False), "stream, quick ACK": (True, True)}  # (stream, quick ACKs)
# Each level's runs on a side, in order: (load generator, mode).
RUNS = (("python", "plain"), ("python", "stream"), ("python", "stream, quick ACK"), ("wrk", "plain"), ("wrk", "stream"))
METRICS = ("requests_per_s", "e2e_ms_p50", "cpu_ms_per_request")
OPENAI_CLIENT_REQUESTS = 100


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


@dataclass
class Side:
    name: str
    host: hosts.Host
    http: str  # inside `host`
    pids: list[int]  # the roots of its process trees


@contextlib.contextmanager
def kvmesh_side(
    host: hosts.Host, log_dir: Path, workers: int, engine_args: dict, checkout: Path = hosts.ROOT
) -> Iterator[Side]:
    """`kvmesh up` with `workers` simulated engines in `host`, on its default ports, once the router
    lists every worker; stopped with Ctrl-C as a user would (the namespace's teardown kills what is left).
    `checkout`: the kvmesh source tree it runs (bench.ab's other revision)."""
    # The readiness probe shows the admin key (auth is off on loopback, but the probe needs one).
    env = {ADMIN_KEY_ENV: KEY_PREFIX + secrets.token_urlsafe(32), MESH_TOKEN_ENV: secrets.token_urlsafe(32)}
    if checkout != hosts.ROOT:  # its services import from there; Triton's stubs start in its directory
        env["PYTHONPATH"] = str(checkout)
    argv = [sys.executable, "-m", "kvmesh", "up", "--log-dir", str(log_dir), "--engine", "sim", "--workers",
            str(workers), "--engine-args", json.dumps(engine_args)]  # fmt: skip
    log_dir.mkdir(parents=True, exist_ok=True)
    for stale in log_dir.glob("*.log"):  # the services append to their logs
        stale.unlink()
    up = host.spawn(argv, env, log_dir / "up.log", cwd=checkout)
    http, router = f"http://127.0.0.1:{hosts.PORTS['http']}", f"127.0.0.1:{hosts.PORTS['router']}"
    try:
        probe = [sys.executable, "-m", "tests.support.hosts", "ready", "--router", router, "--workers", str(workers),
                 "--timeout", "600", f"--url={http}/health"]  # fmt: skip
        ready = host.run(probe, env, timeout_s=620)
        if ready.returncode != 0:
            up_log = (log_dir / "up.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"kvmesh up did not get ready: {ready.stderr[-1000:]}\n{up_log}")
        yield Side("kvmesh", host, http, [up.pid])
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(90)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()


@contextlib.contextmanager
def dynamo_side(host: hosts.Host, scratch: Path, workers: int, engine_args: dict) -> Iterator[Side]:
    sim = SimArgs.model_validate(engine_args)
    with dynamo.serving(host, scratch, DEFAULT_MODEL, workers, sim.block_size, sim.num_blocks, sim.max_num_seqs,
                        sim.max_num_batched_tokens) as running:  # fmt: skip
        yield Side("dynamo", host, running.http, running.pids)


def quick_acks(host: hosts.Host, on: bool) -> None:
    """Delayed ACKs off (`on`) or back on for every new connection to 127.0.0.1 in `host` (its route, not the /8's)."""
    route = ["ip", "route", "replace", "table", "local", "local", "127.0.0.1", "dev", "lo", "proto", "kernel",
             "scope", "host", "src", "127.0.0.1", "quickack", "1" if on else "0"]  # fmt: skip
    done = host.run(route, timeout_s=10)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(route)}: {done.stderr.strip()}")


def measure(side: Side, client: str, mode: str, concurrency: int, n: int, offset: int, wrk_s: int) -> dict:
    """One run of `client` in `mode` against `side`, from inside its host: its figures and CPU."""
    stream, quick = MODES[mode]
    quick_acks(side.host, quick)
    argv = [sys.executable, "-m", "bench.overhead", "load", "--client", client, "--url", side.http, "--requests",
            str(n), "--concurrency", str(concurrency), "--offset", str(offset), "--wrk-seconds", str(wrk_s),
            *(["--stream"] if stream else []), *(f"--cpu-of={pid}" for pid in side.pids)]  # fmt: skip
    done = side.host.run(argv, timeout_s=600)
    if done.returncode != 0:
        raise RuntimeError(f"the {client} load generator against {side.name} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _load_here(args: argparse.Namespace) -> None:
    """The `load` subcommand: one run from this host; prints one JSON line."""
    url = f"{args.url}/v1/chat/completions"
    requests = bodies(DEFAULT_MODEL, args.requests, args.stream, args.offset)
    before, own_before = tree_cpu_s(args.cpu_of, service_of), psutil.Process().cpu_times()
    if args.client == "python":
        figures = asyncio.run(run_level(url, requests, args.concurrency)).summary()
    elif args.client == "wrk":
        figures = wrk.run(url, requests, args.concurrency, args.wrk_seconds)
        if figures["failed"]:
            raise SystemExit(f"wrk: {figures['failed']} of {figures['requests']} requests failed")
    else:
        figures = asyncio.run(openai_client_stream(args.url, requests))
    cpu_s = {k: v - before.get(k, 0.0) for k, v in tree_cpu_s(args.cpu_of, service_of).items()}
    own = psutil.Process().cpu_times()
    n = figures["requests"]
    figures["cpu_ms_per_request"] = round(sum(cpu_s.values()) * 1000 / n, 3)
    by_process = sorted(((round(v * 1000 / n, 2), k) for k, v in cpu_s.items()), reverse=True)
    figures["cpu_ms_per_request_by_process"] = {k: v for v, k in by_process if v >= 0.05}
    if args.client != "wrk":  # it shares the two cores with the servers; wrk's own process is another
        figures["load_generator_cpu_ms_per_request"] = round((sum(own[:2]) - sum(own_before[:2])) * 1000 / n, 2)
    print(json.dumps(figures))


async def openai_client_stream(base: str, requests: list[dict]) -> dict:
    """The official `openai` client streaming `requests` one after the other: e2e p50 and p99 (ms)."""
    client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    times = []
    for body in requests:
        start = time.perf_counter()
        stream = await client.chat.completions.create(
            model=body["model"], messages=body["messages"], max_tokens=body["max_tokens"], stream=True
        )
        async for _ in stream:
            pass
        times.append((time.perf_counter() - start) * 1000)
    await client.close()
    times.sort()
    return {"requests": len(times), "e2e_ms_p50": round(times[len(times) // 2], 2),
            "e2e_ms_p99": round(times[len(times) * 99 // 100 - 1], 2)}  # fmt: skip


PROFILED = ("gateway", "router", "kvindex", "triton_python_backend_stub")


def start_profiles(pid: int, prefix: Path) -> list[subprocess.Popen]:
    """py-spy on every Python process of the mesh under `pid` until stop_profiles; an SVG flame graph each."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    py_spy = Path(sys.executable).with_name("py-spy")
    spies = []
    for p in psutil.Process(pid).children(recursive=True):
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


def summarize(runs: list[dict], sides: list[str]) -> list[dict]:
    """Per load generator, mode and level: each side's metrics over rounds, and the ratios
    kvmesh / Dynamo taken round by round."""
    rows = []
    for key in dict.fromkeys((r["client"], r["mode"], r["concurrency"]) for r in runs):
        by_side = {s: {r["round"]: r for r in runs if (r["client"], r["mode"], r["concurrency"]) == key and
                       r["side"] == s} for s in sides}  # fmt: skip
        row: dict = dict(zip(("client", "mode", "concurrency"), key, strict=True))
        for side, rounds in by_side.items():
            row[side] = {m: spread([r[m] for r in rounds.values()]) for m in METRICS}
        if len(sides) == 2:
            paired = [(k, by_side["dynamo"][rnd]) for rnd, k in by_side["kvmesh"].items()]
            row["ratio"] = {m: spread([k[m] / d[m] for k, d in paired]) for m in METRICS}
        rows.append(row)
    return rows


def print_table(rows: list[dict], sides: list[str]) -> None:
    """Medians over rounds [min–max]; ratios kvmesh / Dynamo."""
    names = {"kvmesh": "kvmesh", "dynamo": "Dynamo", "ratio": "ratio"}
    columns = [*sides, "ratio"] if len(sides) == 2 else sides
    header = ["load gen", "mode", "c"]
    for metric in ("req/s", "e2e p50 ms", "CPU-ms/req"):
        header += [f"{metric} {names[c]}" for c in columns]
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        line = [row["client"], row["mode"], str(row["concurrency"])]
        for metric, digits in zip(METRICS, (0, 1, 2), strict=True):
            line += [cell(row[c][metric], 2 if c == "ratio" else digits) for c in columns]
        print("| " + " | ".join(line) + " |")
    print("stream: delayed ACKs as clients have them (httpx, wrk and the openai client re-arm no TCP_QUICKACK; "
          "Dynamo's streamed answers then stall ~40 ms each on a keep-alive connection); "
          "stream, quick ACK: delayed ACKs off in the namespace")  # fmt: skip


@dataclass
class Runs:
    """The run's measurements, each with prompts no earlier one had."""

    args: argparse.Namespace
    offset: int = 0
    done: list[dict] = field(default_factory=list)

    def run(self, side: Side, client: str, mode: str, concurrency: int, rnd: int, n: int = 0) -> dict:
        """One measurement (`n` requests; by default the level's share) in round `rnd` (0: not kept)."""
        if not n:  # wrk: bodies enough for 2,000 requests/s, so that none repeats
            python = client == "python"
            n = max(concurrency * self.args.requests_per_slot, 200) if python else self.args.wrk_seconds * 2000
        profiling = self.args.profile and side.name == "kvmesh" and client == "python" and rnd
        label = f"r{rnd}-{mode.replace(', quick ACK', '-quickack')}-c{concurrency}"
        spies = start_profiles(side.pids[0], self.args.profile / label) if profiling else []
        try:
            figures = measure(side, client, mode, concurrency, n, self.offset, self.args.wrk_seconds)
        finally:
            stop_profiles(spies)
        self.offset += n
        what = {"round": rnd, "side": side.name, "client": client, "mode": mode, "concurrency": concurrency}
        if rnd:
            self.done.append(what | figures)
            print(f"round {rnd} c={concurrency} {side.name} {client} {mode}: {figures['requests_per_s']:.0f} req/s, "
                  f"e2e p50 {figures['e2e_ms_p50']:.1f} ms, {figures['cpu_ms_per_request']:.2f} CPU-ms/req",
                  flush=True)  # fmt: skip
        return what | figures


def alternate(sides: list[Side], runs: Runs) -> None:
    """Per round and level, every run of RUNS on one side, then on the other; the
    sides' order swapped each round."""
    for side in sides:  # warm-up
        for mode in ("plain", "stream"):
            runs.run(side, "python", mode, 4, 0, n=20)
    for r in range(1, runs.args.rounds + 1):
        for c in runs.args.levels:
            for side in sides if r % 2 else sides[::-1]:
                for client, mode in RUNS:
                    runs.run(side, client, mode, c, r)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--requests-per-slot", type=int, default=10, help="Python load generator (200 at least)")
    parser.add_argument("--wrk-seconds", type=int, default=4, help="each wrk run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-dynamo", action="store_true", help="kvmesh alone")
    parser.add_argument("--profile", type=Path, help="py-spy flame graphs of kvmesh's Python processes, per run, here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench.overhead runs each side in a network namespace of its own: run it as root")
    if not wrk.available():
        raise SystemExit("wrk is not installed: apt-get install wrk (scripts/setup.sh does)")
    if not args.no_dynamo:
        dynamo.install()
    engine_args = {"timing": {**GPU_LIKE, "speedup": 1000}}
    runs = Runs(args)
    with contextlib.ExitStack() as stack:
        kvmesh_host = stack.enter_context(hosts.loopback())
        log_dir = RESULTS / "overhead"
        sides = [stack.enter_context(kvmesh_side(kvmesh_host, log_dir / "kvmesh", args.workers, engine_args))]
        if not args.no_dynamo:
            dynamo_host = stack.enter_context(hosts.loopback())
            sides.append(stack.enter_context(dynamo_side(dynamo_host, log_dir / "dynamo", args.workers, engine_args)))
        alternate(sides, runs)
        openai_client = {
            side.name: runs.run(side, "openai", "stream", 1, 0, n=OPENAI_CLIENT_REQUESTS) for side in sides
        }
    names = [s.name for s in sides]
    summary = summarize(runs.done, names)
    save("overhead", {"rounds": args.rounds, "workers": args.workers, "engine_args": engine_args, "summary": summary,
                      "openai_client_stream_c1": openai_client, "runs": runs.done})  # fmt: skip
    print_table(summary, names)
    for name, figures in openai_client.items():
        e2e = f"{figures['e2e_ms_p50']} / {figures['e2e_ms_p99']} ms"
        print(f"openai client, streaming, c=1, {name}: e2e p50 / p99 {e2e}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["load"]:
        parser = argparse.ArgumentParser()
        parser.add_argument("--client", choices=["python", "wrk", "openai"], required=True)
        parser.add_argument("--url", required=True)
        for flag in ("--requests", "--concurrency", "--offset", "--wrk-seconds"):
            parser.add_argument(flag, type=int, required=True)
        parser.add_argument("--stream", action="store_true")
        parser.add_argument("--cpu-of", type=int, action="append", default=[])
        _load_here(parser.parse_args(sys.argv[2:]))
    else:
        main()
