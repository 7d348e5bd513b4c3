"""Production's faults under load: a simulated mesh serves a steady stream of requests while a
seeded schedule injects faults one at a time, and every answer is checked token for token.

    flock /tmp/kvmesh-integration.lock .venv/bin/python -m bench.chaos \\
        [--minutes 10] [--faults worker-kill triton-stop ...] [--concurrency 32] [--seed 7]

The mesh: `kvmesh up --engine sim --workers 4 --routers 2` (GPU-like timing at SPEEDUP, gateways
cutting a stalled stream after WRITE_TIMEOUT_S) and a second gateway of it. The load: `--concurrency`
closed-loop streaming completions, sent to the gateways in turn; like a load balancer, a request
whose gateway refuses the connection goes to the other one (counted as `moved`, not failed).
Prompts come from a pool answered once on the undisturbed mesh before the first fault: every later
answer must be that text (the sim engine's tokens are a function of the prompt), so a token lost or
repeated on the way (a migration, a failover) shows as a mismatch.

Faults (FAULTS), each injected once in a seeded order, the next only after the last recovered and
a quiet spell: SIGKILL a worker (`kvmesh up` starts another), SIGSTOP a worker's tritonserver for
20 s, SIGKILL a router, SIGKILL kvindex, SIGKILL Redis (`kvmesh up` restarts it empty), SIGTERM
`kvmesh up`'s gateway (the second one serves meanwhile; `kvmesh up` starts it again), and a client
that stops reading its stream. For each: requests failed (a non-200, an error event, a stream cut
short or a hang past 60 s), mismatched answers, seconds to detect (the mesh shows it noticed) and
to recover (the mesh is whole again), and TTFT p99 from injection to recovery against the 30 s
before. Writes bench/results/chaos.json and chaos.png (the timeline).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import socket
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import httpx
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.common import GPU_LIKE, RESULTS, save, start_gateway, stop
from bench.loadgen import percentile
from kvmesh.auth import bearer
from kvmesh.cli.local_mesh import LocalMesh
from kvmesh.v1 import router_pb2, router_pb2_grpc

WORKERS, ROUTERS = 4, 2
MAX_TOKENS = 48
REQUEST_TIMEOUT_S = 60.0  # a stream that has not ended by then is a hang: a failure
WARM_UP_S = 20.0  # load before the first fault: the "before" of the first TTFT comparison
BEFORE_S = 30.0
DETECT_TIMEOUT_S, RECOVER_TIMEOUT_S = 60.0, 180.0
STOP_S = 20.0  # how long triton-stop keeps a tritonserver stopped
# The engines at 100× a GPU's speed: a request's 48 tokens take ~10 ms of engine time, and the slow
# client's stream fills the kernel's buffers (~4 MiB) in seconds rather than the ~15 minutes it
# would take at 1×; with --stream-write-timeout-s below, the gateway cuts it off within the run.
SPEEDUP = 100
WRITE_TIMEOUT_S = 5
SLOW_TOKENS = 120_000
WORDS = "mesh router engine token block cache prefill decode worker gateway index lease quota stream".split()


class NotAnswered(Exception):
    """The gateway closed the connection before answering (a draining gateway's idle keep-alive
    connection, reused at that moment): nothing of the request ran."""


@dataclass
class Outcome:
    start: float  # seconds since the run began
    end: float
    ttft_s: float | None
    ok: bool
    error: str = ""
    mismatch: bool = False
    moved: bool = False  # its first gateway refused the connection


@dataclass
class FaultRecord:
    name: str
    target: str
    injected: float
    detected: float | None = None
    recovered: float | None = None
    note: str = ""
    report: dict = field(default_factory=dict)


class Load:
    """Closed-loop streaming clients over the gateways; every answer checked against `expected`."""

    def __init__(self, gateways: list[str], model: str, prompts: list[str], concurrency: int, seed: int):
        self.gateways, self.model, self.prompts = gateways, model, prompts
        self.concurrency = concurrency
        self.rng = random.Random(seed)
        self.expected: dict[int, str] = {}
        self.outcomes: list[Outcome] = []
        self.t0 = time.monotonic()
        self._turn = 0

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def reference(self, client: httpx.AsyncClient) -> None:
        """Each prompt's answer on the undisturbed mesh."""
        for i in range(len(self.prompts)):
            text, error, _ = await self._stream(client, self.gateways[0], i)
            if error:
                raise RuntimeError(f"the undisturbed mesh failed prompt {i}: {error}")
            self.expected[i] = text

    async def run(self, client: httpx.AsyncClient, until: asyncio.Event) -> None:
        async def clients() -> None:
            while not until.is_set():
                self.outcomes.append(await self.one(client, self.rng.randrange(len(self.prompts))))

        await asyncio.gather(*(clients() for _ in range(self.concurrency)))

    async def one(self, client: httpx.AsyncClient, prompt: int) -> Outcome:
        start = self.now()
        self._turn += 1
        order = [self.gateways[(self._turn + k) % len(self.gateways)] for k in range(len(self.gateways))]
        error, moved, text, ttft = "every gateway refused the connection", False, "", None
        for base in order:
            try:
                text, error, ttft = await asyncio.wait_for(self._stream(client, base, prompt), REQUEST_TIMEOUT_S)
                break
            except (httpx.ConnectError, NotAnswered):
                moved = (
                    True  # a load balancer sends it to the next gateway, as Envoy's reset/connect-failure retries do
                )
            except TimeoutError:
                error = f"no end within {REQUEST_TIMEOUT_S:.0f} s"
                break
            except httpx.HTTPError as e:
                error = f"{type(e).__name__}: {e}"
                break
        ok = not error
        mismatch = ok and text != self.expected[prompt]
        if mismatch:
            want = self.expected[prompt]
            pairs = enumerate(zip(text, want, strict=False))
            at = next((k for k, (a, b) in pairs if a != b), min(len(text), len(want)))
            error = f"answer differs from character {at}: {len(text)} characters, the undisturbed mesh's {len(want)}"
        return Outcome(start, self.now(), ttft, ok and not mismatch, error, mismatch, moved)

    async def _stream(self, client: httpx.AsyncClient, base: str, prompt: int) -> tuple[str, str, float | None]:
        """The answer's text, an error ("" if none) and its TTFT."""
        body = {"model": self.model, "prompt": self.prompts[prompt], "max_tokens": MAX_TOKENS, "stream": True,
                "temperature": 0.0, "ignore_eos": True}  # fmt: skip
        start, ttft, parts, done = time.monotonic(), None, [], False
        request = client.build_request("POST", f"{base}/v1/completions", json=body)
        try:
            response = await client.send(request, stream=True)
        except (httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError) as e:
            raise NotAnswered from e  # the connection closed before any answer: the request was never taken
        try:
            if response.status_code != 200:
                return "", f"HTTP {response.status_code}: {(await response.aread())[:200]!r}", None
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                event = json.loads(line[6:])
                if "error" in event:
                    return "", f"error event: {event['error']}", ttft
                if ttft is None:
                    ttft = time.monotonic() - start
                parts.append(event["choices"][0]["text"])
        finally:
            await response.aclose()
        return "".join(parts), "" if done else "the stream ended without [DONE]", ttft


class Mesh:
    """What the faults act on and the probes read: `kvmesh up`'s processes and its router's view."""

    def __init__(self, mesh: LocalMesh, rng: random.Random):
        self.mesh, self.rng = mesh, rng

    def workers(self) -> list[router_pb2.WorkerStatus]:
        with self.mesh.channel(self.mesh.router) as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            reply = stub.Workers(router_pb2.WorkersRequest(), timeout=3, metadata=bearer(self.mesh.admin_key))
            return list(reply.workers)

    def whole(self, gone: str = "") -> bool:
        """Every worker registered and answering, `gone` not among them."""
        try:
            live = [w for w in self.workers() if w.record.id != gone and not w.record.unresponsive]
        except grpc.RpcError:
            return False
        return len(live) >= WORKERS

    def serving(self, address: str) -> bool:
        try:
            with grpc.insecure_channel(address) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                return reply.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False

    def slow_client_cuts(self) -> float:
        """Streams `kvmesh up`'s gateway ended because their client stopped reading."""
        wanted = 'kvmesh_gateway_requests_total{front="http",status="slow_client"} '
        for line in httpx.get(f"{self.mesh.http}/metrics", timeout=2).text.splitlines():
            if line.startswith(wanted):
                return float(line.removeprefix(wanted))
        return 0.0

    def worker_with_triton(self) -> tuple[str, psutil.Process, psutil.Process]:
        """A worker chosen at random: its id, its process and its tritonserver."""
        records = {w.record.triton_grpc_address.rsplit(":", 1)[1]: w.record.id for w in self.workers()}
        choices = []
        for worker in self.mesh.service_processes("worker"):
            for child in worker.children():
                port = next((a.split("=", 1)[1] for a in child.cmdline() if a.startswith("--grpc-port=")), None)
                if child.name() == "tritonserver" and port in records:
                    choices.append((records[port], worker, child))
        return self.rng.choice(sorted(choices, key=lambda c: c[0]))

    def one_of(self, service: str) -> psutil.Process:
        return self.rng.choice(sorted(self.mesh.service_processes(service), key=lambda p: p.pid))


def kill_tree(process: psutil.Process) -> None:
    for p in [*process.children(recursive=True), process]:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


Probe = Callable[[], bool]


async def until(probe: Probe, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if await asyncio.to_thread(probe):
                return True
        except (grpc.RpcError, OSError, StopIteration):  # what it asks is down right now
            pass
        await asyncio.sleep(0.1)
    return False


async def worker_kill(m: Mesh, record: FaultRecord) -> tuple[Probe, Probe]:
    worker_id, worker, _ = m.worker_with_triton()
    record.target = worker_id
    kill_tree(worker)
    return (lambda: worker_id not in {w.record.id for w in m.workers()}), (lambda: m.whole(gone=worker_id))


async def triton_stop(m: Mesh, record: FaultRecord) -> tuple[Probe, Probe]:
    worker_id, _, triton = m.worker_with_triton()
    record.target = worker_id
    triton.suspend()
    asyncio.get_running_loop().call_later(STOP_S, triton.resume)

    def marked() -> bool:
        return any(w.record.id == worker_id and w.record.unresponsive for w in m.workers())

    resumed = time.monotonic() + STOP_S
    return marked, (lambda: time.monotonic() > resumed and m.whole())


async def router_kill(m: Mesh, record: FaultRecord) -> tuple[Probe, Probe]:
    router = m.one_of("router")
    argv = router.cmdline()
    address = f"127.0.0.1:{argv[argv.index('--port') + 1]}"
    record.target = address
    kill_tree(router)
    return (lambda: not m.serving(address)), (lambda: m.serving(address))


async def kvindex_kill(m: Mesh, record: FaultRecord) -> tuple[Probe, Probe]:
    record.target = m.mesh.kvindex
    kill_tree(m.one_of("kvindex"))
    return (lambda: not m.serving(m.mesh.kvindex)), (lambda: m.serving(m.mesh.kvindex))


async def redis_restart(m: Mesh, record: FaultRecord) -> tuple[Probe, Probe]:
    redis = next(p for p in psutil.Process(m.mesh.process.pid).children() if p.name() == "redis-server")
    record.target = f"pid {redis.pid}"
    redis.kill()
    return (lambda: "redis-server exited" in m.mesh.log("up")), m.whole


async def gateway_term(m: Mesh, record: FaultRecord) -> tuple[Probe, Probe]:
    gateway = m.one_of("gateway")
    record.target = m.mesh.http
    gateway.send_signal(signal.SIGTERM)

    def down() -> bool:
        try:
            return httpx.get(f"{m.mesh.http}/health", timeout=1).status_code != 200
        except httpx.HTTPError:
            return True

    return down, (lambda: not down())


async def slow_client(m: Mesh, record: FaultRecord) -> tuple[Probe, Probe]:
    """A client that opens a long stream and never reads it: the gateway must cut it off (its
    connection cannot close while unread data fills it, so the gateway's count of such cuts tells)."""
    host, port = m.mesh.http.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    body = json.dumps({"model": m.mesh.model, "prompt": "a slow reader " * 20, "max_tokens": SLOW_TOKENS,
                       "stream": True, "ignore_eos": True}).encode()  # fmt: skip
    head = f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    cuts = m.slow_client_cuts()
    sock.sendall(head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    record.target = f"port {sock.getsockname()[1]}"

    def cut_off() -> bool:
        if m.slow_client_cuts() > cuts:
            sock.close()
            return True
        return False

    return cut_off, cut_off


FAULTS: dict[str, Callable[[Mesh, FaultRecord], Awaitable[tuple[Probe, Probe]]]] = {
    "worker-kill": worker_kill,
    "triton-stop": triton_stop,
    "router-kill": router_kill,
    "kvindex-kill": kvindex_kill,
    "redis-restart": redis_restart,
    "gateway-term": gateway_term,
    "slow-client": slow_client,
}


def prompts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"Request {i}: " + " ".join(rng.choices(WORDS, k=120)) for i in range(n)]


def window(outcomes: list[Outcome], start: float, end: float) -> list[Outcome]:
    """Requests that were in flight at some point of [start, end]."""
    return [o for o in outcomes if o.start <= end and o.end >= start]


def p99_ttft_ms(outcomes: list[Outcome]) -> float | None:
    ttfts = [o.ttft_s * 1000 for o in outcomes if o.ttft_s is not None]
    return round(percentile(ttfts, 99), 1) if ttfts else None


def report(record: FaultRecord, outcomes: list[Outcome]) -> dict:
    end = (record.recovered if record.recovered is not None else record.injected + RECOVER_TIMEOUT_S) + 5.0
    during = window(outcomes, record.injected, end)
    before = window(outcomes, record.injected - BEFORE_S, record.injected)
    return {
        "requests": len(during),
        "failed": sum(not o.ok and not o.mismatch for o in during),
        "mismatched": sum(o.mismatch for o in during),
        "moved": sum(o.moved for o in during),
        "detect_s": round(record.detected - record.injected, 2) if record.detected is not None else None,
        "recover_s": round(record.recovered - record.injected, 2) if record.recovered is not None else None,
        "ttft_p99_ms_before": p99_ttft_ms(before),
        "ttft_p99_ms_during": p99_ttft_ms(during),
        "errors": sorted({o.error for o in during if o.error})[:5],  # mismatches say where they differ
    }


async def inject_all(m: Mesh, load: Load, names: list[str], seconds: float) -> list[FaultRecord]:
    records = []
    end = seconds
    await asyncio.sleep(WARM_UP_S)
    for k, name in enumerate(names):
        record = FaultRecord(name, "", load.now())
        detect, recover = await FAULTS[name](m, record)
        print(f"{record.injected:7.1f} s  {name} ({record.target})", flush=True)
        if await until(detect, DETECT_TIMEOUT_S):
            record.detected = load.now()
        if await until(recover, RECOVER_TIMEOUT_S):
            record.recovered = load.now()
        else:
            record.note = f"not recovered within {RECOVER_TIMEOUT_S:.0f} s"
        records.append(record)
        # Spread what is left of the run over the faults still to come.
        quiet = max(10.0, (end - load.now()) / (len(names) - k)) if k + 1 < len(names) else 0.0
        await asyncio.sleep(quiet)
    await asyncio.sleep(max(0.0, end - load.now()))
    return records


async def run(mesh: LocalMesh, gateways: list[str], args: argparse.Namespace) -> dict:
    load = Load(gateways, mesh.model, prompts(args.prompts, args.seed), args.concurrency, args.seed)
    limits = httpx.Limits(max_connections=args.concurrency * 2, max_keepalive_connections=args.concurrency * 2)
    async with httpx.AsyncClient(timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=2.0), limits=limits) as client:
        await load.reference(client)
        load.t0 = time.monotonic()
        names = list(args.faults)
        random.Random(args.seed).shuffle(names)
        finished = asyncio.Event()
        running = asyncio.ensure_future(load.run(client, finished))
        try:
            records = await inject_all(Mesh(mesh, random.Random(args.seed)), load, names, args.minutes * 60)
        finally:
            finished.set()
            await running
    for record in records:
        record.report = report(record, load.outcomes)
    outcomes = load.outcomes
    return {
        "minutes": args.minutes,
        "concurrency": args.concurrency,
        "seed": args.seed,
        "requests": len(outcomes),
        "failed": sum(not o.ok and not o.mismatch for o in outcomes),
        "mismatched": sum(o.mismatch for o in outcomes),
        "moved": sum(o.moved for o in outcomes),
        "ttft_p50_ms": round(statistics.median([o.ttft_s * 1000 for o in outcomes if o.ttft_s]), 1),
        "faults": [asdict(r) for r in records],
        "timeline": [(round(o.start, 3), round(o.end, 3), o.ttft_s and round(o.ttft_s, 4), o.ok) for o in outcomes],
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ends = [(end, ok) for _, end, _, ok in result["timeline"]]
    last = int(max(end for end, _ in ends)) + 1
    served, failed = [0] * last, [0] * last
    for end, ok in ends:
        (served if ok else failed)[int(end)] += 1
    ttft_by_5s: dict[int, list[float]] = {}
    for start, _, ttft, _ in result["timeline"]:
        if ttft:
            ttft_by_5s.setdefault(int(start // 5) * 5, []).append(ttft * 1000)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 6), sharex=True)
    top.plot(range(last), served, label="answered /s", lw=0.8)
    top.plot(range(last), failed, label="failed /s", color="red", lw=0.8)
    top.set_ylabel("requests / s")
    top.legend(loc="upper right")
    times = sorted(ttft_by_5s)
    bottom.plot(times, [percentile(ttft_by_5s[t], 99) for t in times], label="TTFT p99 (5-s bins)")
    bottom.set_ylabel("ms")
    bottom.set_xlabel("seconds")
    bottom.legend(loc="upper right")
    for fault in result["faults"]:
        for axis in (top, bottom):
            axis.axvline(fault["injected"], color="red", ls="--", lw=0.8)
            if fault["recovered"] is not None:
                axis.axvspan(fault["injected"], fault["recovered"], color="orange", alpha=0.15)
        top.annotate(fault["name"], (fault["injected"], max(served) * 0.95), rotation=90, fontsize=7, va="top")
    fig.suptitle(f"bench.chaos: {result['requests']} requests, {result['failed']} failed, "
                 f"{result['mismatched']} mismatched")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def print_table(result: dict) -> None:
    print("\nfault          | target              | reqs | failed | mismatched | moved | detect s | recover s | "
          "TTFT p99 ms before / during")  # fmt: skip
    for f in result["faults"]:
        r = f["report"]
        print(f"{f['name']:<14} | {f['target'][:19]:<19} | {r['requests']:4d} | {r['failed']:6d} | "
              f"{r['mismatched']:10d} | {r['moved']:5d} | {r['detect_s']!s:>8} | {r['recover_s']!s:>9} | "
              f"{r['ttft_p99_ms_before']} / {r['ttft_p99_ms_during']}  {f['note']}")  # fmt: skip
    print(f"\nall: {result['requests']} requests, {result['failed']} failed, {result['mismatched']} mismatched, "
          f"{result['moved']} moved to the other gateway")  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--faults", nargs="+", choices=sorted(FAULTS), default=list(FAULTS))
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=64, help="the pool the requests draw from")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--log-dir", type=Path, default=RESULTS / "chaos")
    args = parser.parse_args(argv)
    engine_args = json.dumps({"timing": {**GPU_LIKE, "speedup": SPEEDUP}})
    mesh = LocalMesh.start(
        args.log_dir, extra_args=("--engine", "sim", "--workers", str(WORKERS), "--engine-args", engine_args),
        routers=ROUTERS, env={"KVMESH_GATEWAY_STREAM_WRITE_TIMEOUT_S": str(WRITE_TIMEOUT_S)},
    )  # fmt: skip
    second = None
    try:
        mesh.wait_for_workers(WORKERS)
        second, base = start_gateway(
            mesh, args.log_dir / "gateway-second.log", "--stream-write-timeout-s", str(WRITE_TIMEOUT_S)
        )
        result = asyncio.run(run(mesh, [mesh.http, base], args))
    finally:
        stop(second)
        mesh.stop()
    RESULTS.mkdir(exist_ok=True)
    plot(result, RESULTS / "chaos.png")
    save("chaos", {k: v for k, v in result.items() if k != "timeline"})
    print_table(result)
    return result


if __name__ == "__main__":
    main()
