"""Routing decision latency at scale: N registered workers, ~1M indexed blocks, 128-block requests.

    .venv/bin/python -m bench.decision_latency [--workers 64] [--blocks 1000000] [--requests 3000]

A real redis-server and a real router process; the workers are registry records only (no
engines: this measures the decision). The index is filled through the same Redis functions
kvindex uses: prefixes of 128 blocks, each held by 1–8 workers, the deeper blocks by fewer.
Prints p50/p99 of `Router.Route` as a client sees it (gRPC round trip included), of a Route over
the gateway's Router.Session stream, of the decision alone (the router's code in process, Redis
included, no RPC), of the router's Redis read alone (the match + load read in one round trip,
over the router's own wire and, for reference, redis-py's pipeline) and of an empty gRPC call to
the same server (the floor of any RPC from Python here), in one run; and each route's ratio to
the bare read.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

import grpc
import numpy as np
import redis.asyncio as aioredis

from bench.common import save, start_service, stop
from kvmesh import block_index, load_keys, registry
from kvmesh.block_index import BlockIndex, BlockRun
from kvmesh.net import free_ports
from kvmesh.redis_server import RedisServer
from kvmesh.redis_wire import RedisWire
from kvmesh.v1 import router_pb2, router_pb2_grpc, worker_pb2
from services.gateway.router_client import RouterClient
from services.router import main as router_main
from services.router.config import RouterSettings

BLOCK = 64
REQUEST_BLOCKS = 128


async def fill(url: str, workers: list[str], total_blocks: int, rng: random.Random) -> list[list[int]]:
    """Indexes prefixes until `total_blocks` block keys exist; returns the prefixes."""
    client = aioredis.Redis.from_url(url)
    index = BlockIndex(client)
    await index.load_functions()
    prefixes, keys = [], 0
    while keys < total_blocks:
        seqs = [rng.getrandbits(64) for _ in range(REQUEST_BLOCKS)]
        prefixes.append(seqs)
        holders = rng.sample(workers, rng.randint(1, 8))
        for depth_rank, worker in enumerate(holders):
            depth = REQUEST_BLOCKS >> depth_rank  # 128, 64, 32 … blocks
            await index.apply(worker, [BlockRun(True, seqs[0], seqs[:depth])])
        keys += REQUEST_BLOCKS
    await client.aclose()
    return prefixes


async def register(url: str, workers: list[str]) -> None:
    client = aioredis.Redis.from_url(url)
    reg = registry.Registry(client)
    for i, worker in enumerate(workers):
        record = worker_pb2.WorkerRecord(
            id=worker, model="m", role=worker_pb2.ROLE_AGGREGATED, triton_grpc_address=f"127.0.0.1:{10000 + i}",
            kv_block_size=BLOCK, capacity=64, max_model_len=131072,
        )  # fmt: skip
        await reg.register(record, lease_ms=3_600_000)
    await client.aclose()


async def redis_alone(url: str, prefixes: list[list[int]], n: int, rng: random.Random, wire: bool) -> list[float]:
    """The decision's Redis read and nothing else: the match and the load in one round trip, over
    the router's own wire (kvmesh/redis_wire.py, the floor) or redis-py's pipeline."""
    client = aioredis.Redis.from_url(url)
    own = RedisWire(client)
    times = []
    for _ in range(n):
        keys = block_index.match_keys(rng.choice(prefixes))
        start = time.perf_counter()
        if wire:
            await own.exchange([("FCALL_RO", "kvmesh_match", len(keys), *keys), ("HGETALL", load_keys.KEYS[0])])
        else:
            pipe = client.pipeline(transaction=False)
            pipe.fcall_ro("kvmesh_match", len(keys), *keys)
            pipe.hgetall(load_keys.KEYS[0])
            await pipe.execute()
        times.append(time.perf_counter() - start)
    own.close()
    await client.aclose()
    return times


def route_request(request_id: str, seqs: list[int]) -> router_pb2.RouteRequest:
    return router_pb2.RouteRequest(
        model="m", request_id=request_id, num_tokens=REQUEST_BLOCKS * BLOCK, block_hashes=seqs, block_size=BLOCK
    )


def route_calls(address: str, prefixes: list[list[int]], n: int, rng: random.Random) -> list[float]:
    times = []
    with grpc.insecure_channel(address) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        for i in range(n):
            request = route_request(f"r{i}", rng.choice(prefixes))
            start = time.perf_counter()
            stub.Route(request)
            times.append(time.perf_counter() - start)
            stub.Release(router_pb2.ReleaseRequest(request_id=f"r{i}"))
    return times


async def decisions(url: str, prefixes: list[list[int]], n: int, rng: random.Random) -> list[float]:
    """The decision alone: the router's own servicer in this process, its Redis read included,
    no RPC (what a router inside the gateway would pay)."""
    servicer, stop_background = await router_main.assemble(RouterSettings(redis_url=url))
    times = []
    try:
        for i in range(-200, n):  # the first 200 warm up
            request = route_request(f"d{i}", rng.choice(prefixes))
            start = time.perf_counter()
            await servicer.Route(request, None)
            if i >= 0:
                times.append(time.perf_counter() - start)
            await servicer.Release(router_pb2.ReleaseRequest(request_id=f"d{i}"), None)
    finally:
        await stop_background()
    return times


async def session_routes(address: str, prefixes: list[list[int]], n: int, rng: random.Random) -> list[float]:
    """The gateway's way: Route and Release as messages on one Router.Session stream."""
    client, times = RouterClient(address), []
    try:
        for i in range(n):
            start = time.perf_counter()
            await client.route("m", f"s{i}", REQUEST_BLOCKS * BLOCK, rng.choice(prefixes), BLOCK, {})
            times.append(time.perf_counter() - start)
            client.release(f"s{i}")
    finally:
        await client.close()
    return times


def health_calls(address: str, n: int) -> list[float]:
    """The floor: a unary gRPC call that does nothing (the standard health check), same server."""
    times = []
    with grpc.insecure_channel(address) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        for _ in range(n):
            start = time.perf_counter()
            check(b"")
            times.append(time.perf_counter() - start)
    return times


def figures(times: list[float]) -> dict[str, float]:
    ms = np.array(times) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    rng = random.Random(7)
    redis_port, router_port = free_ports(2)
    server = RedisServer(redis_port).start()
    router = None
    try:
        workers = [f"w-{i:02d}" for i in range(args.workers)]
        started = time.perf_counter()
        prefixes = asyncio.run(fill(server.url, workers, args.blocks, rng))
        asyncio.run(register(server.url, workers))
        took = time.perf_counter() - started
        print(f"indexed {len(prefixes) * REQUEST_BLOCKS} block keys in {took:.0f}s", flush=True)
        router = start_service("router", router_port, server.url)
        address = f"127.0.0.1:{router_port}"
        time.sleep(1.0)  # the router's first registry read
        route_calls(address, prefixes, 200, rng)  # warm-up
        result = {
            "workers": args.workers,
            "block_keys": len(prefixes) * REQUEST_BLOCKS,
            "request_blocks": REQUEST_BLOCKS,
            "route_at_client": figures(route_calls(address, prefixes, args.requests, rng)),
            "route_over_session": figures(asyncio.run(session_routes(address, prefixes, args.requests, rng))),
            "decision_in_process": figures(asyncio.run(decisions(server.url, prefixes, args.requests, rng))),
            "redis_read_alone": figures(asyncio.run(redis_alone(server.url, prefixes, args.requests, rng, True))),
            "redis_read_alone_redis_py": figures(
                asyncio.run(redis_alone(server.url, prefixes, args.requests, rng, False))
            ),
            "empty_grpc_call": figures(health_calls(address, args.requests)),
        }
        floor = result["redis_read_alone"]
        for name in ("decision_in_process", "route_over_session", "route_at_client"):
            result[f"{name}_over_read"] = {
                q: round(result[name][f"{q}_ms"] / floor[f"{q}_ms"], 2) for q in ("p50", "p99")
            }  # fmt: skip

    finally:
        stop(router)
        server.stop()
    save("decision_latency", result)


if __name__ == "__main__":
    main()
