"""Routing decision latency at scale: N registered workers, ~1M indexed blocks, 128-block requests.

    .venv/bin/python -m bench.decision_latency [--workers 64] [--blocks 1000000] [--requests 3000]

A real redis-server and a real router process; the workers are registry records only (no
engines: this measures the decision). The index is filled through the same Redis functions
kvindex uses: prefixes of 128 blocks, each held by 1–8 workers, the deeper blocks by fewer.
Prints p50/p99 of `Router.Route` as a client sees it (gRPC round trip included), of a Route over
the gateway's Router.Session stream (its path under load), of the gateway's routing when nothing
else is in flight there (services/gateway/routing.py: in process), of the decision alone (the
routing library in process, Redis included, no RPC), of the router's Redis read alone (the match
+ load read in one round trip, over the router's own wire and, for reference, redis-py's
pipeline) and of an empty gRPC call to the same server (the floor of any RPC from Python here),
in one run, the in-process decision, the gateway's routes and the bare reads alternating request
by request; and each route's ratio to the bare read. For those, the bench process's CPU per call
too (in process: the decision's whole cost; over the Session: the client's side only).
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
from kvmesh.routing.assemble import assemble
from kvmesh.routing.config import RoutingConfig
from kvmesh.v1 import router_pb2, router_pb2_grpc, worker_pb2
from services.gateway.router_client import RouterClient
from services.gateway.routing import Routing

BLOCK = 64
REQUEST_BLOCKS = 128
WARM_UP = 200  # rounds untimed


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


class Timed:
    """One request of each kind timed in turn (the order rotating), so that the machine's drift
    and the other processes on its cores touch every kind alike: the decision in process
    (kvmesh/routing/router.py, its Redis read included, no RPC), the gateway's routing when idle
    (the same, through services/gateway/routing.py), a Route over the gateway's Router.Session
    stream to the router process, and the decision's Redis read alone (the match and the load in
    one round trip) over the router's own wire (kvmesh/redis_wire.py, the floor) and, for
    reference, redis-py's pipeline."""

    def __init__(self, url: str, address: str):
        self.url, self.address = url, address

    async def run(self, prefixes: list[list[int]], n: int, rng: random.Random) -> dict[str, list[float]]:
        workers = registry.Watcher(registry.Registry(registry.connect(self.url)), 0.25)
        await workers.start()
        router, stop_background = await assemble(RoutingConfig(), self.url, None, workers)
        client = aioredis.Redis.from_url(self.url)
        wire, session = RedisWire(client), RouterClient(self.address)
        gateway = await idle_gateway(session, router)
        kinds = {
            "decision_in_process": lambda i, seqs: self.decision(router, f"d{i}", seqs),
            "route_over_session": lambda i, seqs: self.session_route(session, f"s{i}", seqs),
            "route_at_idle_gateway": lambda i, seqs: self.gateway_route(gateway, f"g{i}", seqs),
            "redis_read_alone": lambda i, seqs: self.read(wire.exchange, seqs),
            "redis_read_alone_redis_py": lambda i, seqs: self.read(self.pipeline(client), seqs),
        }
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in kinds}
        try:
            for i in range(-WARM_UP, n):
                order = list(kinds)
                order = order[i % len(order) :] + order[: i % len(order)]
                for name in order:
                    took = await kinds[name](i, rng.choice(prefixes))
                    if i >= 0:
                        times[name].append(took)
        finally:
            await session.close()
            wire.close()
            await client.aclose()
            await stop_background()
            await workers.stop()
        return times

    @staticmethod
    async def decision(router, request_id: str, seqs: list[int]) -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.thread_time()
        await router.route(route_request(request_id, seqs))
        took = time.perf_counter() - start, time.thread_time() - cpu
        router.released(request_id)
        return took

    @staticmethod
    async def gateway_route(gateway: Routing, request_id: str, seqs: list[int]) -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.thread_time()
        await gateway.route("m", request_id, REQUEST_BLOCKS * BLOCK, seqs, BLOCK, {})
        took = time.perf_counter() - start, time.thread_time() - cpu
        gateway.release(request_id)
        return took

    @staticmethod
    async def session_route(session: RouterClient, request_id: str, seqs: list[int]) -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.thread_time()
        await session.route(route_request(request_id, seqs))
        took = time.perf_counter() - start, time.thread_time() - cpu
        session.release(request_id)
        return took

    @staticmethod
    async def read(exchange, seqs: list[int]) -> tuple[float, float]:
        keys = block_index.match_keys(seqs)
        start, cpu = time.perf_counter(), time.thread_time()
        await exchange([("FCALL_RO", "kvmesh_match", len(keys), *keys), ("HGETALL", load_keys.KEYS[0])])
        return time.perf_counter() - start, time.thread_time() - cpu

    @staticmethod
    def pipeline(client: aioredis.Redis):
        async def exchange(commands: list[tuple]) -> list:
            pipe = client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            return await pipe.execute()

        return exchange


async def idle_gateway(session: RouterClient, router) -> Routing:
    """The gateway's routing when nothing else is in flight there: in process, once a router's
    session has told it the settings (here, at once), with `router` as the one it builds."""

    async def built(config: RoutingConfig):
        async def nothing_to_stop() -> None:
            pass

        return router, nothing_to_stop

    told = []

    def remote_of(on_settings):
        told.append(on_settings)
        return session

    gateway = Routing(remote_of, built, in_process_below=1)
    told[0](RoutingConfig().to_proto())  # as a router's session would
    await asyncio.sleep(0)  # the router is "built"
    assert gateway.local is router
    return gateway


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


def figures(times: list[float] | list[tuple[float, float]]) -> dict[str, float]:
    """p50 and p99 of the wall times; with (wall, this thread's CPU) pairs, the CPU's p50 too (the
    calling process's own work, which the other processes on the cores do not stretch)."""
    paired = bool(times) and isinstance(times[0], tuple)
    ms = np.array(times) * 1000
    wall = ms[:, 0] if paired else ms
    out = {"p50_ms": round(float(np.percentile(wall, 50)), 3), "p99_ms": round(float(np.percentile(wall, 99)), 3)}
    if paired:
        out["cpu_p50_ms"] = round(float(np.percentile(ms[:, 1], 50)), 3)
    return out


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
        route_calls(address, prefixes, WARM_UP, rng)
        alternating = asyncio.run(Timed(server.url, address).run(prefixes, args.requests, rng))
        result = {
            "workers": args.workers,
            "block_keys": len(prefixes) * REQUEST_BLOCKS,
            "request_blocks": REQUEST_BLOCKS,
            "route_at_client": figures(route_calls(address, prefixes, args.requests, rng)),
            **{name: figures(times) for name, times in alternating.items()},
            "empty_grpc_call": figures(health_calls(address, args.requests)),
        }
        floor = result["redis_read_alone"]
        for name in ("decision_in_process", "route_at_idle_gateway", "route_over_session", "route_at_client"):
            result[f"{name}_over_read"] = {
                q: round(result[name][f"{q}_ms"] / floor[f"{q}_ms"], 2) for q in ("p50", "p99")
            }  # fmt: skip

    finally:
        stop(router)
        server.stop()
    save("decision_latency", result)


if __name__ == "__main__":
    main()
