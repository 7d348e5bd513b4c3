"""A long steady run on a simulated mesh: nothing lost, and no process, Redis or file table growing.

    flock /tmp/kvmesh-integration.lock .venv/bin/python -m bench.soak [--requests 100000] [--concurrency 64]

`kvmesh up --engine sim --workers 2` at speed-up 1000 (engine time ≈ 0, so the mesh's own code is
what runs). `--concurrency` closed-loop clients send `--requests` requests, half streaming, every
prompt new (so the engines evict and the KV index must forget as fast as it learns); one request in
a hundred is abandoned by its client (a stream closed after its first event, or a plain request
given up after 20 ms). Every 5 s the RSS and open file descriptors of every mesh process and
Redis's key count and memory are sampled.

Checks: every request not abandoned is answered whole (200, `[DONE]` or a body with `usage`);
after warm-up (the first 20% of the requests) RSS grows < 5% per process, the key count and file
descriptors stay flat. Writes bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import redis

from bench.common import GPU_LIKE, RESULTS, save
from kvmesh.cli.local_mesh import LocalMesh

SAMPLE_S = 5.0
WARM_UP = 0.2  # of the requests
ABANDON = 0.01
RSS_GROWTH, KEY_GROWTH, FD_SLACK = 0.05, 0.05, 8


@dataclass
class Sample:
    t: float
    done: int  # requests finished so far
    rss_mb: dict[str, float]  # "service pid" → MB
    fds: dict[str, int]
    redis_keys: int
    redis_mb: float


@dataclass
class Tally:
    answered: int = 0
    abandoned: int = 0
    lost: list[str] = field(default_factory=list)  # what went wrong, for the first few

    @property
    def done(self) -> int:
        return self.answered + self.abandoned + len(self.lost)


def processes(mesh: LocalMesh) -> dict[str, psutil.Process]:
    named = {}
    for p in [psutil.Process(mesh.process.pid), *psutil.Process(mesh.process.pid).children(recursive=True)]:
        try:
            argv = p.cmdline()
            service = next((a.removeprefix("services.") for a in argv if a.startswith("services.")), p.name())
            named[f"{service} {p.pid}"] = p
        except psutil.NoSuchProcess:
            pass
    return named


def sample(mesh: LocalMesh, store: redis.Redis, t: float, done: int) -> Sample:
    rss, fds = {}, {}
    for name, p in processes(mesh).items():
        try:
            rss[name], fds[name] = p.memory_info().rss / 2**20, p.num_fds()
        except psutil.NoSuchProcess:
            pass
    return Sample(t, done, rss, fds, store.dbsize(), store.info("memory")["used_memory"] / 2**20)


async def one(client: httpx.AsyncClient, base: str, model: str, i: int, rng: random.Random, tally: Tally) -> None:
    stream, abandon = rng.random() < 0.5, rng.random() < ABANDON
    body = {"model": model, "prompt": f"soak {i} {rng.getrandbits(64):x} " + "lorem ipsum " * 60,
            "max_tokens": 16, "stream": stream}  # fmt: skip
    try:
        if stream:
            async with client.stream("POST", f"{base}/v1/completions", json=body) as response:
                ended = False
                async for line in response.aiter_lines():
                    if abandon:
                        tally.abandoned += 1
                        return  # leaving the block closes the connection mid-stream
                    ended = ended or line == "data: [DONE]"
                if response.status_code == 200 and ended:
                    tally.answered += 1
                else:
                    tally.lost.append(f"stream: HTTP {response.status_code}, [DONE] seen: {ended}")
            return
        if (
            abandon
        ):  # on a connection of its own, closed with it: a cancelled request's connection never returns to the pool
            async with httpx.AsyncClient(timeout=60) as own:
                try:
                    await asyncio.wait_for(own.post(f"{base}/v1/completions", json=body), 0.02)
                except TimeoutError:
                    pass
            tally.abandoned += 1
            return
        response = await client.post(f"{base}/v1/completions", json=body)
        if response.status_code == 200 and "usage" in response.json():
            tally.answered += 1
        else:
            tally.lost.append(f"HTTP {response.status_code}: {response.text[:200]}")
    except httpx.HTTPError as e:
        tally.lost.append(f"{type(e).__name__}: {e}")


async def load(mesh: LocalMesh, args: argparse.Namespace, samples: list[Sample]) -> Tally:
    tally, rng, numbers = Tally(), random.Random(args.seed), iter(range(args.requests))
    store = redis.Redis.from_url(mesh.redis_url)
    start = time.monotonic()

    async def client_loop(client: httpx.AsyncClient) -> None:
        for i in numbers:
            await one(client, mesh.http, mesh.model, i, rng, tally)

    async def sampler() -> None:
        while True:
            samples.append(await asyncio.to_thread(sample, mesh, store, time.monotonic() - start, tally.done))
            await asyncio.sleep(SAMPLE_S)

    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        watching = asyncio.ensure_future(sampler())
        await asyncio.gather(*(client_loop(client) for _ in range(args.concurrency)))
        watching.cancel()
    samples.append(sample(mesh, store, time.monotonic() - start, tally.done))
    return tally


def growth(samples: list[Sample], requests: int) -> dict:
    """Each series from the end of warm-up to the end of the run."""
    after = [s for s in samples if s.done >= requests * WARM_UP]
    first, last = after[0], after[-1]
    rss = {
        name: {
            "mb_after_warm_up": round(first.rss_mb[name], 1),
            "mb_end": round(mb, 1),
            "growth": round(mb / first.rss_mb[name] - 1, 4),
        }  # fmt: skip
        for name, mb in last.rss_mb.items()
        if name in first.rss_mb
    }
    fds = {name: (first.fds[name], n) for name, n in last.fds.items() if name in first.fds}
    keys = [s.redis_keys for s in after]
    series = {name: [(s.done, round(s.rss_mb[name], 1)) for s in samples if name in s.rss_mb] for name in last.rss_mb}
    return {
        "rss": rss,
        "rss_mb_by_requests_done": series,
        "fds_after_warm_up_and_end": fds,
        "redis_keys_after_warm_up": first.redis_keys,
        "redis_keys_max_after_warm_up": max(keys),
        "redis_keys_end": last.redis_keys,
        "redis_mb_after_warm_up_and_end": (round(first.redis_mb, 1), round(last.redis_mb, 1)),
        "restarted": sorted(set(first.rss_mb) ^ set(last.rss_mb)),
    }


def verdicts(tally: Tally, grown: dict) -> dict[str, bool]:
    fds = grown["fds_after_warm_up_and_end"].values()
    return {
        "nothing lost": not tally.lost,
        f"RSS growth < {RSS_GROWTH:.0%} per process": all(r["growth"] < RSS_GROWTH for r in grown["rss"].values()),
        "Redis keys flat": grown["redis_keys_max_after_warm_up"]
        <= grown["redis_keys_after_warm_up"] * (1 + KEY_GROWTH) + 10,
        "file descriptors flat": all(end <= start + FD_SLACK for start, end in fds),
        "no process restarted": not grown["restarted"],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--log-dir", type=Path, default=RESULTS / "soak")
    args = parser.parse_args(argv)
    # A small KV cache: the engines evict, and the index forgets, from early in the run.
    engine_args = json.dumps({"timing": {**GPU_LIKE, "speedup": 1000}, "num_blocks": 512})
    mesh = LocalMesh.start(args.log_dir, extra_args=("--engine", "sim", "--workers", "2", "--engine-args", engine_args))
    samples: list[Sample] = []
    started = time.monotonic()
    try:
        mesh.wait_for_workers(2)
        tally = asyncio.run(load(mesh, args, samples))
    finally:
        mesh.stop()
    grown = growth(samples, args.requests)
    result = {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "minutes": round((time.monotonic() - started) / 60, 1),
        "answered": tally.answered,
        "abandoned": tally.abandoned,
        "lost": len(tally.lost),
        "lost_examples": tally.lost[:5],
        **grown,
        "verdicts": verdicts(tally, grown),
    }
    save("soak", result)
    return result


if __name__ == "__main__":
    main()
