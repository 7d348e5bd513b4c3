"""What the front door costs a request: `overhead`'s workload through a gateway with API keys and
quotas on against one with them off, same run, same mesh, same client, alternating rounds.

    flock /tmp/kvmesh-integration.lock .venv/bin/python -m bench.front_door \\
        [--levels 1 16 64] [--rounds 4] [--wrk-seconds 4] [--requests 200] [--plain-only | --stream-only]
        [--no-limits] [--a-a]

The mesh: `kvmesh up` with 2 simulated workers at speed-up 1000 (engine time ≈ 0) on loopback, and
beside it two more gateways of that mesh (same Redis and router, their own processes and ports),
started alike but for `--auth off` / `--auth on`. The `on` one is called with a key whose limits
(rpm, tpm, max-concurrency) are set so high that none trips: every request pays the whole path —
the bearer lookup, admission from the gateway's leased slice of the key's quota (renewed in Redis
once a second, kvmesh/quota_lease.py), streamed tokens counted, the usage, the per-key metrics.
Prompts are `overhead`'s (~830 tokens, never repeated), max_tokens 16.

Each level (streaming and not × concurrency) runs `--rounds` rounds; a round runs both arms, its
order swapped each round (off, on / on, off, …) so that drift falls on both alike. An arm's round
is wrk for `--wrk-seconds` (native: req/s with the two cores left to the mesh, and CPU a request
under saturation) and then the Python load generator for `--requests` requests (e2e and TTFT,
CPU a request at that load). The rounds of an arm are pooled (requests and CPU seconds summed).

CPU: every process of the mesh (kvmesh up's tree: Redis, router, kvindex, workers with Triton and
engines, its own gateway) plus both bench gateways, split as `gateway` (the one serving the round),
`idle gateways` (the other two: their idle cost falls on both arms alike and cancels in the
difference), `redis-server`, `router`, …. The front door's cost a request is the `on` arm's CPU-ms
a request less the `off` arm's, over all of it and over gateway + Redis. The goal (#28): at
c = 64, ≤ 0.2 CPU-ms a request and ≤ 5% fewer req/s. `--a-a` starts the `on` gateway with auth off
too: what the bench itself tells apart between two identical gateways. Writes
bench/results/front_door.json (front_door_a_a.json with `--a-a`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from bench import wrk
from bench.common import GPU_LIKE, RESULTS, save, service_of, start_gateway, stop, tree_cpu_s
from bench.loadgen import LevelResult, run_level
from bench.overhead import bodies
from kvmesh import registry
from kvmesh.api_keys import ApiKey, KeyStore
from kvmesh.cli.local_mesh import LocalMesh
from kvmesh.quota import Quotas
from kvmesh.quota_lease import LEASE_S

ARMS = ("off", "on")
KEY_NAME = "bench-front-door"
# Limits never reached (about 400 req/s and 350k tokens/s here), so every request is metered and none refused.
KEY = ApiKey(name=KEY_NAME, rpm=10_000_000, tpm=10_000_000_000, max_concurrency=100_000)
GOAL_CPU_MS, GOAL_RATE_RATIO = 0.2, 0.95


@dataclass
class Gateway:
    arm: str
    process: subprocess.Popen
    url: str  # the chat completions endpoint
    headers: dict[str, str]


def start_arm(mesh: LocalMesh, arm: str, auth: str, headers: dict[str, str], log_dir: Path) -> Gateway:
    process, base = start_gateway(mesh, log_dir / f"gateway-{arm}.log", "--auth", auth)
    return Gateway(arm, process, f"{base}/v1/chat/completions", headers)


async def make_key(redis_url: str, key: ApiKey) -> str:
    client = registry.connect(redis_url)
    try:
        return await KeyStore(client).create(key)
    finally:
        await client.aclose()


async def metered_requests(redis_url: str) -> int:
    """Requests the quota store recorded for the bench key (its usage, this hour and the last)."""
    client = registry.connect(redis_url)
    try:
        return sum(row.requests for row in await Quotas(client).usage([KEY_NAME], hours=2))
    finally:
        await client.aclose()


def check_arms(gateways: dict[str, Gateway], body: dict, limited: bool) -> None:
    """The `on` gateway refuses a request without the key and meters one with it (with rate-limit
    headers if the key has limits); `off` meters nothing."""
    refused = httpx.post(gateways["on"].url, json=body, timeout=60)
    if refused.status_code != 401:
        raise RuntimeError(f"the --auth on gateway answered {refused.status_code} without a key: {refused.text}")
    for arm, gateway in gateways.items():
        answer = httpx.post(gateway.url, json=body, headers=gateway.headers, timeout=60)
        answer.raise_for_status()
        if ("x-ratelimit-limit-requests" in answer.headers) != (arm == "on" and limited):
            raise RuntimeError(f"--auth {arm}: unexpected rate-limit headers {dict(answer.headers)}")


def cpu_now(roots: list[int], serving: int) -> dict[str, float]:
    """CPU seconds so far of every process under `roots`, by part; `serving` is the gateway under load."""

    def part(process: psutil.Process) -> str:
        if process.pid == serving:
            return "gateway"
        name = service_of(process)
        return "idle gateways" if name == "gateway" else name

    return tree_cpu_s(roots, part)


def grew(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after}


@dataclass
class Tally:
    """One arm's pooled rounds at one level, under one load generator."""

    requests: int = 0
    wall_s: float = 0.0
    failed: int = 0

    def __post_init__(self) -> None:
        self.cpu_s: dict[str, float] = defaultdict(float)
        self.e2e_ms: list[float] = []  # p50 per round (wrk) or per request (loadgen)
        self.ttft: list[float] = []
        self.rates: list[float] = []  # per round

    def add(self, requests: int, wall_s: float, cpu_s: dict[str, float]) -> None:
        self.requests += requests
        self.wall_s += wall_s
        self.rates.append(requests / wall_s)
        for k, v in cpu_s.items():
            self.cpu_s[k] += v

    def cpu_ms(self, parts: tuple[str, ...] | None = None) -> float:
        seconds = sum(v for k, v in self.cpu_s.items() if parts is None or k in parts)
        return seconds * 1000 / self.requests

    def summary(self) -> dict:
        by_process = sorted(((round(v * 1000 / self.requests, 3), k) for k, v in self.cpu_s.items()), reverse=True)
        return {
            "requests": self.requests,
            "failed": self.failed,
            "requests_per_s": round(self.requests / self.wall_s, 1),
            "requests_per_s_by_round": [round(r, 1) for r in self.rates],
            "e2e_ms_p50": round(statistics.median(self.e2e_ms), 2),
            **({"ttft_ms_p50": round(statistics.median(self.ttft), 2)} if self.ttft else {}),
            "cpu_ms_per_request": round(self.cpu_ms(), 3),
            "cpu_ms_per_request_by_process": {k: v for v, k in by_process if v >= 0.005},
        }


FRONT = ("gateway", "redis-server")  # where the front door's own work runs


def compare(off: Tally, on: Tally) -> dict:
    return {
        "cpu_ms_per_request_on_minus_off": round(on.cpu_ms() - off.cpu_ms(), 3),
        "gateway_and_redis_cpu_ms_on_minus_off": round(on.cpu_ms(FRONT) - off.cpu_ms(FRONT), 3),
        "requests_per_s_on_over_off": round((on.requests / on.wall_s) / (off.requests / off.wall_s), 3),
        "requests_per_s_on_over_off_by_round": [round(a / b, 3) for a, b in zip(on.rates, off.rates, strict=True)],
        "e2e_p50_on_over_off": round(statistics.median(on.e2e_ms) / statistics.median(off.e2e_ms), 3),
    }


class Bench:
    def __init__(self, mesh: LocalMesh, gateways: dict[str, Gateway], args: argparse.Namespace):
        self.mesh, self.gateways, self.args = mesh, gateways, args
        self.roots = [mesh.process.pid, *(g.process.pid for g in gateways.values())]
        self.offset = 0  # prompts never repeat, across arms and rounds
        self.sent_on = 0  # requests the `on` gateway answered (its metering is checked against it)

    def take(self, n: int, stream: bool) -> list[dict]:
        out = bodies(self.mesh.model, n, stream, self.offset)
        self.offset += n
        return out

    def wrk_round(self, gateway: Gateway, stream: bool, c: int, tally: Tally) -> None:
        work = self.take(int(self.args.wrk_seconds * 1000), stream)  # enough for 1,000 req/s
        before = cpu_now(self.roots, gateway.process.pid)
        figures = wrk.run(gateway.url, work, c, self.args.wrk_seconds, headers=gateway.headers)
        tally.add(figures["requests"], figures["duration_s"], grew(before, cpu_now(self.roots, gateway.process.pid)))
        tally.failed += figures["failed"]
        tally.e2e_ms.append(figures["e2e_ms_p50"])
        # wrk counts the answers it read; up to `c` more were sent and cut off at the end.
        self.sent_on += figures["requests"] if gateway.arm == "on" else 0

    def loadgen_round(self, gateway: Gateway, stream: bool, c: int, tally: Tally) -> None:
        work = self.take(max(self.args.requests, c * 2), stream)
        before = cpu_now(self.roots, gateway.process.pid)
        level: LevelResult = asyncio.run(run_level(gateway.url, work, c, gateway.headers))
        tally.add(level.requests, level.wall_s, grew(before, cpu_now(self.roots, gateway.process.pid)))
        tally.e2e_ms += [t.e2e_s * 1000 for t in level.timings]
        tally.ttft += [t.ttft_s * 1000 for t in level.timings]
        self.sent_on += level.requests if gateway.arm == "on" else 0

    def level(self, stream: bool, c: int) -> dict:
        tallies = {(arm, gen): Tally() for arm in ARMS for gen in ("wrk", "loadgen")}
        for r in range(self.args.rounds):
            for arm in ARMS if r % 2 == 0 else ARMS[::-1]:
                if self.args.wrk_seconds:
                    self.wrk_round(self.gateways[arm], stream, c, tallies[arm, "wrk"])
                if self.args.requests:
                    self.loadgen_round(self.gateways[arm], stream, c, tallies[arm, "loadgen"])
        out: dict = {"stream": stream, "concurrency": c}
        for gen in ("wrk", "loadgen"):
            off, on = tallies["off", gen], tallies["on", gen]
            if off.requests:
                out[gen] = {"off": off.summary(), "on": on.summary(), "front_door": compare(off, on)}
        return out


def print_table(levels: list[dict]) -> None:
    header = "stream | c  | req/s off / on (ratio) | CPU-ms/req off / on | front door CPU-ms/req: all, gateway+redis"
    for gen in ("wrk", "loadgen"):
        rows = [lv for lv in levels if gen in lv]
        if rows:
            print(f"\n{gen}:\n{header}")
        for lv in rows:
            off, on, door = lv[gen]["off"], lv[gen]["on"], lv[gen]["front_door"]
            rate = (
                f"{off['requests_per_s']:.0f} / {on['requests_per_s']:.0f} ({door['requests_per_s_on_over_off']:.3f})"
            )
            cpu = f"{off['cpu_ms_per_request']:.2f} / {on['cpu_ms_per_request']:.2f}"
            cost = (
                f"{door['cpu_ms_per_request_on_minus_off']:+.3f}, {door['gateway_and_redis_cpu_ms_on_minus_off']:+.3f}"
            )
            print(f"{'yes' if lv['stream'] else 'no':<6} | {lv['concurrency']:<2} | {rate} | {cpu} | {cost}")


def print_goal(levels: list[dict]) -> None:
    for lv in levels:
        if lv["concurrency"] == 64 and "wrk" in lv:
            door = lv["wrk"]["front_door"]
            cost, ratio = door["cpu_ms_per_request_on_minus_off"], door["requests_per_s_on_over_off"]
            met = cost <= GOAL_CPU_MS and ratio >= GOAL_RATE_RATIO
            stream = "streaming" if lv["stream"] else "not streaming"
            print(
                f"goal at c=64, {stream}: {'met' if met else 'missed'} ({cost:+.3f} CPU-ms a request, req/s ×{ratio})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--rounds", type=int, default=4, help="rounds per level; each runs both arms")
    parser.add_argument("--wrk-seconds", type=int, default=4, help="an arm's wrk run per round (0: none)")
    parser.add_argument("--requests", type=int, default=200, help="an arm's Python load generator requests per round")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--plain-only", action="store_true", help="no streaming levels")
    only.add_argument("--stream-only", action="store_true", help="streaming levels only")
    parser.add_argument("--a-a", action="store_true", help="both gateways with auth off: the bench's own spread")
    parser.add_argument("--no-limits", action="store_true",
                        help="a key without limits: no admission FCALL (release, usage, metrics kept)")  # fmt: skip
    args = parser.parse_args()
    key = ApiKey(name=KEY_NAME) if args.no_limits else KEY
    if args.wrk_seconds and not wrk.available():
        raise SystemExit("wrk is not installed: apt-get install wrk (scripts/setup.sh does), or --wrk-seconds 0")
    if args.rounds < 1 or not (args.wrk_seconds or args.requests):
        raise SystemExit("--rounds must be ≥ 1, and --wrk-seconds or --requests > 0")
    started = time.monotonic()
    log_dir = RESULTS / "front_door"
    engine_args = {"timing": {**GPU_LIKE, "speedup": 1000}}
    mesh = LocalMesh.start(
        log_dir, extra_args=("--engine", "sim", "--workers", "2", "--engine-args", json.dumps(engine_args))
    )
    gateways: dict[str, Gateway] = {}
    try:
        mesh.wait_for_workers(2)
        secret = asyncio.run(make_key(mesh.redis_url, key))
        for arm in ARMS:
            keyed = arm == "on" and not args.a_a
            headers = {"Authorization": f"Bearer {secret}"} if keyed else {}
            gateways[arm] = start_arm(mesh, arm, "on" if keyed else "off", headers, log_dir)
        bench = Bench(mesh, gateways, args)
        if not args.a_a:
            check_arms(gateways, bench.take(1, False)[0], limited=not args.no_limits)
        for gateway in gateways.values():  # warm-up
            asyncio.run(run_level(gateway.url, bench.take(40, False), 4, gateway.headers))
        bench.sent_on = 1 + 40  # the check's and the warm-up's
        results: dict = {"workers": 2, "rounds": args.rounds, "wrk_seconds": args.wrk_seconds,
                         "loadgen_requests": args.requests, "levels": []}  # fmt: skip
        for stream in (False,) if args.plain_only else (True,) if args.stream_only else (False, True):
            for c in args.levels:
                level = bench.level(stream, c)
                results["levels"].append(level)
                print(json.dumps(level), flush=True)
        if not args.a_a:
            results["on_requests_answered"] = bench.sent_on
            time.sleep(2 * LEASE_S)  # the usage of requests admitted from a slice is recorded at its renewal
            results["on_requests_metered"] = asyncio.run(metered_requests(mesh.redis_url))
    finally:
        for gateway in gateways.values():
            stop(gateway.process)
        mesh.stop()
    results["minutes"] = round((time.monotonic() - started) / 60, 1)
    save("front_door_a_a" if args.a_a else "front_door", results)
    print_table(results["levels"])
    if not args.a_a:  # wrk cuts off up to c requests in flight at its end: sent, metered, not counted as answered
        metered, answered = results["on_requests_metered"], results["on_requests_answered"]
        print(f"\nquota store: {metered} requests metered, {answered} answered")
    print_goal(results["levels"])


if __name__ == "__main__":
    main()
