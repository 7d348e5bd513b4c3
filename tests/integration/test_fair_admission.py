"""Fair admission on a real gateway with auth on (--auth on, keys in the mesh's Redis), over one
simulated worker of SLOTS sequences whose router lets no more than that in flight (the capacity
filter's queue_factor 1): the engine queues nothing, so every wait is the gateway's queue's.

(a) A key offering 10× another's load saturates the mesh; the light key's p50 latency stays within
    1.5× of its value on an idle mesh (it waits about one slot-turn, not the heavy key's backlog).
(b) Two keys both offering more than the mesh serves, at 10× different rates and with requests of
    different sizes, each get 40–60% of the tokens served.
(c) A high-priority key's TTFT p50 under a saturating low-priority load stays within 1.5× of idle.
Each case also shows the load was queuing (x-kvmesh-queue-ms), and the queue empties once its
clients leave mid-wait."""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from dataclasses import dataclass

import httpx
import pytest
import redis.asyncio as aioredis

from kvmesh.api_keys import ApiKey, KeyStore
from kvmesh.cli.local_mesh import LocalMesh

pytestmark = pytest.mark.timeout(90)

SLOTS = 4
# Speed-up 4: a step of about 8 ms, a 16 + 16 token request about 0.15 s.
ENGINE_ARGS = {"max_num_seqs": SLOTS, "timing": {"speedup": 4}}
POLICIES = {"kv-aware": {"picker": "round_robin", "params": {"capacity": {"queue_factor": 1.0}}}}
KEYS = {"heavy": "normal", "light": "normal", "high": "high", "low": "low"}
QUEUE_HEADER = "x-kvmesh-queue-ms"
# The saturating loads' output lengths, drawn per request: equal ones, batched together, would end
# together and free the slots in bursts, not one by one as real traffic does.
VARIED = range(8, 25)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    env = {
        "KVMESH_GATEWAY_MAX_QUEUED": "256",
        "KVMESH_GATEWAY_QUEUE_TIMEOUT_S": "60",
        "KVMESH_ROUTER_POLICIES": json.dumps(POLICIES),
    }
    args = ("--auth", "on", "--engine", "sim", "--engine-args", json.dumps(ENGINE_ARGS))
    mesh = LocalMesh.start(tmp_path_factory.mktemp("fair-logs"), extra_args=args, env=env, ready_timeout_s=300)
    mesh.wait_for_workers(1)
    yield mesh
    assert mesh.stop() == 0, mesh.log("up")


@pytest.fixture(scope="module")
async def keys(mesh) -> dict[str, str]:
    """Name → secret."""
    # Keys count only with auth on: without, every request is one key ("anonymous").
    assert httpx.get(f"{mesh.http}/v1/models").status_code == 401
    redis = aioredis.from_url(mesh.redis_url)
    store = KeyStore(redis)
    made = {name: await store.create(ApiKey(name=name, priority=priority)) for name, priority in KEYS.items()}
    await redis.aclose()
    return made


@pytest.fixture
async def client():
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=200)) as c:
        yield c


@dataclass
class Served:
    ttft: float
    e2e: float
    tokens: int  # prompt + completion, as the usage reports them
    queue_ms: float


async def complete(client, mesh, secret: str, prompt_len: int, max_tokens: int | range) -> Served:
    """One streamed completion of a prompt no other request shares (no prefix cache hit);
    `max_tokens` a range: drawn from it."""
    if isinstance(max_tokens, range):
        max_tokens = random.choice(max_tokens)
    body = {"model": mesh.model, "prompt": [random.randrange(1000, 40000) for _ in range(prompt_len)],
            "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    start, ttft, tokens = time.perf_counter(), None, 0
    url = f"{mesh.http}/v1/completions"
    async with client.stream("POST", url, json=body, headers={"Authorization": f"Bearer {secret}"}) as r:
        assert r.status_code == 200, await r.aread()
        queue_ms = float(r.headers[QUEUE_HEADER])
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line.removeprefix("data: "))
            if ttft is None and event["choices"]:
                ttft = time.perf_counter() - start
            if event.get("usage"):
                tokens = event["usage"]["prompt_tokens"] + event["usage"]["completion_tokens"]
    assert ttft is not None and tokens == prompt_len + max_tokens
    return Served(ttft, time.perf_counter() - start, tokens, queue_ms)


class Load:
    """`streams` clients of one key, each sending its next request when the last is answered,
    until stopped; then they leave, cancelling what still waits."""

    def __init__(self, client, mesh, secret: str, streams: int, prompt_len: int, max_tokens: int | range):
        self.served: list[tuple[float, Served]] = []  # (finished at, what)
        args = (client, mesh, secret, prompt_len, max_tokens)
        self.tasks = [asyncio.create_task(self._loop(*args)) for _ in range(streams)]

    async def _loop(self, *args) -> None:
        while True:
            done = await complete(*args)
            self.served.append((time.perf_counter(), done))

    def tokens_between(self, start: float, end: float) -> int:
        return sum(s.tokens for at, s in self.served if start <= at < end)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def sequential(client, mesh, secret: str, count: int, prompt_len: int, max_tokens: int) -> list[Served]:
    return [await complete(client, mesh, secret, prompt_len, max_tokens) for _ in range(count)]


async def queue_empties(client, mesh) -> None:
    """The gateway's queue gauge is back to 0 in every priority once its waiters' clients left."""
    deadline = time.monotonic() + 10
    while True:
        text = (await client.get(f"{mesh.http}/metrics")).text
        depths = [float(line.split()[-1]) for line in text.splitlines() if line.startswith("kvmesh_gateway_queued{")]
        if depths and not any(depths):
            return
        assert time.monotonic() < deadline, f"queue depths stay {depths}"
        await asyncio.sleep(0.2)


def p50(values) -> float:
    return statistics.median(values)


async def test_a_light_key_keeps_its_idle_latency_beside_a_key_at_ten_times_its_load(mesh, keys, client):
    idle = await sequential(client, mesh, keys["light"], 12, 16, 16)
    heavy = Load(client, mesh, keys["heavy"], 10, 16, VARIED)  # ten streams to the light key's one
    try:
        await asyncio.sleep(1.0)
        loaded = await sequential(client, mesh, keys["light"], 20, 16, 16)
    finally:
        await heavy.stop()
    await queue_empties(client, mesh)
    idle_p50, loaded_p50 = p50(s.e2e for s in idle), p50(s.e2e for s in loaded)
    # The heavy key's requests waited for the mesh: in line behind its own, each about 1.5 service times.
    assert p50(s.queue_ms for _, s in heavy.served) / 1000 > idle_p50, "the heavy key did not saturate the mesh"
    # Its requests wait about one slot-turn (SLOTS turning over), and are served in a fuller batch.
    assert loaded_p50 <= 1.5 * idle_p50, (idle_p50, loaded_p50, [s.queue_ms for s in loaded])


async def test_two_keys_over_capacity_each_get_40_to_60_percent_of_the_tokens(mesh, keys, client):
    # Light: as many streams as the mesh has slots (more than its half); heavy: ten times that,
    # of requests half the size, so it offers 5× the tokens.
    light = Load(client, mesh, keys["light"], SLOTS, 8, 24)
    heavy = Load(client, mesh, keys["heavy"], 10 * SLOTS, 8, 8)
    try:
        await asyncio.sleep(2.0)
        start = time.perf_counter()
        await asyncio.sleep(8.0)
        end = time.perf_counter()
    finally:
        await asyncio.gather(light.stop(), heavy.stop())
    await queue_empties(client, mesh)
    served = {"light": light.tokens_between(start, end), "heavy": heavy.tokens_between(start, end)}
    assert min(p50(s.queue_ms for _, s in load.served) for load in (light, heavy)) > 0, "a key never queued"
    share = served["light"] / sum(served.values())
    assert 0.4 <= share <= 0.6, served


async def test_a_high_priority_key_keeps_its_idle_ttft_under_a_saturating_low_priority_load(mesh, keys, client):
    # A 1024-token prompt: its prefill is most of its TTFT, as for a real prompt; the queue adds at
    # most the wait for the next slot (SLOTS of them turning over), where in line with the
    # low-priority backlog it would wait for all of it.
    idle = await sequential(client, mesh, keys["high"], 8, 1024, 2)
    low = Load(client, mesh, keys["low"], 5 * SLOTS, 16, VARIED)
    try:
        await asyncio.sleep(1.0)
        loaded = await sequential(client, mesh, keys["high"], 10, 1024, 2)
    finally:
        await low.stop()
    await queue_empties(client, mesh)
    idle_p50, loaded_p50 = p50(s.ttft for s in idle), p50(s.ttft for s in loaded)
    assert p50(s.queue_ms for _, s in low.served) / 1000 > idle_p50, "the low-priority load did not saturate"
    assert loaded_p50 <= 1.5 * idle_p50, (idle_p50, loaded_p50, [s.queue_ms for s in loaded])
