"""Router replicas and a kvindex restart on a simulated mesh (`kvmesh up --routers 2`, two sim
workers) under steady streaming load from several clients:
- a router SIGKILLed: the gateway leaves it within 1 s, no request fails, every stream gets all
  its tokens, `kvmesh up` restarts it and it routes again; afterwards the shared load in Redis is
  empty (no slot leaked by the move, none counted twice);
- kvindex SIGKILLed: routing goes on over the index as it stood (a prompt indexed before still
  routes to its holder), and once kvindex is back the index holds a prompt served while it was
  down (rebuilt from the workers' replay buffers)."""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import pytest
import redis

from kvmesh.cli.local_mesh import LocalMesh
from kvmesh.load_keys import KEYS
from tests.integration.test_kv_routing import generate
from tests.support.index_probe import index_probe
from tests.support.meshes import ROUTER_DECIDES
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(300)

BLOCK = 64  # the simulated engine's KV block size (engines/sim/engine.py)
PROMPT_BLOCKS = 4
MAX_TOKENS = 24
CLIENTS = 6
# Speed-up 4: a 24-token request takes about 0.2 s, so each client sends several a second.
ENGINE_ARGS = {"timing": {"speedup": 4}}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    args = ("--engine", "sim", "--workers", "2", "--engine-args", json.dumps(ENGINE_ARGS), *ROUTER_DECIDES)
    mesh = LocalMesh.start(tmp_path_factory.mktemp("failover-logs"), extra_args=args, routers=2, ready_timeout_s=300)
    try:
        mesh.wait_for_workers(2, timeout_s=120)
        yield mesh
    finally:
        assert mesh.stop() == 0, mesh.log("up")


@dataclass
class Load:
    served: int = 0
    failures: list[str] = field(default_factory=list)


@asynccontextmanager
async def steady_load(mesh: LocalMesh):
    """CLIENTS clients streaming chat completions back to back; each stream must end with
    `length` and MAX_TOKENS completion tokens, else it counts as a failure."""
    load, done = Load(), asyncio.Event()
    body = {
        "model": mesh.model,
        "messages": [{"role": "user", "content": "Count slowly."}],
        "max_tokens": MAX_TOKENS,
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    async def client() -> None:
        async with httpx.AsyncClient(base_url=mesh.http, timeout=30) as http:
            while not done.is_set():
                try:
                    async with http.stream("POST", "/v1/chat/completions", json=body) as reply:
                        if reply.status_code != 200:
                            load.failures.append(f"{reply.status_code}: {(await reply.aread()).decode()}")
                            continue
                        events = [line async for line in reply.aiter_lines() if line.startswith("data: {")]
                except httpx.HTTPError as e:
                    load.failures.append(repr(e))
                    continue
                chunks = [json.loads(line.removeprefix("data: ")) for line in events]
                finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
                usage = chunks[-1].get("usage") or {}
                if finish[-1:] != ["length"] or usage.get("completion_tokens") != MAX_TOKENS:
                    load.failures.append(f"incomplete stream: finish {finish[-1:]}, usage {usage}")
                else:
                    load.served += 1

    clients = [asyncio.create_task(client()) for _ in range(CLIENTS)]
    try:
        yield load
    finally:
        done.set()
        await asyncio.gather(*clients)


def gateway_metric(mesh: LocalMesh, name: str, labels: str) -> float:
    text = httpx.get(f"{mesh.http}/metrics", timeout=5).text
    found = re.search(rf"^{name}\{{{re.escape(labels)}\}} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


async def until(condition, timeout_s: float, what: str) -> None:
    """wait_for, without blocking the load's event loop."""
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(condition):
        assert time.monotonic() < deadline, f"{what} not met within {timeout_s}s"
        await asyncio.sleep(0.02)


async def test_a_killed_router_fails_no_request_and_takes_traffic_again(mesh):
    second = mesh.routers[1]
    label = f'router="{second}"'

    def routes(router: str) -> float:
        return gateway_metric(mesh, "kvmesh_gateway_router_routes_total", f'router="{router}"')

    async with steady_load(mesh) as load:
        await until(lambda: all(routes(r) >= 5 for r in mesh.routers), 30, "both routers routing")
        (process,) = [
            p for p in mesh.service_processes("router") if f"--port {second.split(':')[1]}" in " ".join(p.cmdline())
        ]
        served_before = load.served
        process.kill()
        killed = time.monotonic()
        await until(lambda: gateway_metric(mesh, "kvmesh_gateway_router_up", label) == 0, 5, "the gateway leaving it")
        left_after = time.monotonic() - killed
        # kvmesh up restarts it; the gateway finds it answering and routes on it again.
        await until(lambda: gateway_metric(mesh, "kvmesh_gateway_router_up", label) == 1, 60, "the router back")
        back = routes(second)
        await until(lambda: routes(second) >= back + 5, 30, "the restarted router routing")
        assert load.served > served_before + 10
    assert left_after < 1.0, left_after
    assert load.failures == [], f"{len(load.failures)} failed, e.g. {load.failures[0]}"
    shared = redis.Redis.from_url(mesh.redis_url)

    def shared_load_empty() -> bool:
        counts = {k: int(v) for k, v in shared.hgetall(KEYS[0]).items()}
        return shared.hlen(KEYS[1]) == 0 and not any(counts.values())

    wait_for(shared_load_empty, timeout_s=5, what="the shared load back to zero (nothing leaked or counted twice)")


async def test_routing_goes_on_while_kvindex_is_down_and_the_index_catches_up(mesh):
    async with steady_load(mesh) as load:
        await asyncio.to_thread(kill_kvindex_and_watch_the_index, mesh)
        served = load.served
    assert served > 10
    assert load.failures == [], f"{len(load.failures)} failed, e.g. {load.failures[0]}"


def kill_kvindex_and_watch_the_index(mesh: LocalMesh) -> None:
    rng = random.Random(29)
    before, during = (rng.choices(range(1000, 20000), k=PROMPT_BLOCKS * BLOCK + 5) for _ in range(2))
    with index_probe(mesh, BLOCK) as probe:
        inference, depth, chosen = probe.inference, probe.depth, probe.chosen
        holder = generate(inference, mesh.model, before).worker_id
        wait_for(lambda: depth(before, holder) == PROMPT_BLOCKS, timeout_s=5, what="the first prompt in the index")
        (kvindex,) = mesh.service_processes("kvindex")
        starts = mesh.log("kvindex").count("kvindex ready")
        kvindex.kill()
        # Down: the router still routes by the index as it stood, and requests are served.
        assert chosen(before) == holder
        served_during = generate(inference, mesh.model, during).worker_id
        assert [generate(inference, mesh.model, rng.choices(range(1000, 20000), k=100)) for _ in range(10)]
        wait_for(lambda: mesh.log("kvindex").count("kvindex ready") > starts, timeout_s=60, what="kvindex restarted")
        # Back: it resubscribes, and each worker's replay buffer brings what it missed.
        wait_for(lambda: depth(during, served_during) == PROMPT_BLOCKS, timeout_s=15, what="the missed prompt indexed")
        assert depth(before, holder) == PROMPT_BLOCKS
        assert chosen(before) == holder
