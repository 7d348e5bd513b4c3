"""A small closed-loop load generator for OpenAI-compatible servers: N concurrent clients, each
request timed for TTFT, inter-token gaps (streaming) and completion tokens (from `usage`)."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field

import httpx


@dataclass
class RequestTiming:
    ttft_s: float
    itl_s: list[float]
    e2e_s: float
    completion_tokens: int


@dataclass
class LevelResult:
    concurrency: int
    requests: int
    wall_s: float
    timings: list[RequestTiming] = field(default_factory=list)
    # CPU seconds the server side used during the level, by part (bench.common.tree_cpu_s).
    cpu_s: dict[str, float] = field(default_factory=dict)

    def merge(self, other: LevelResult) -> None:
        """Pool another run of the same level (throughput over the summed wall time)."""
        self.requests += other.requests
        self.wall_s += other.wall_s
        self.timings += other.timings
        for part, seconds in other.cpu_s.items():
            self.cpu_s[part] = self.cpu_s.get(part, 0.0) + seconds

    @property
    def tokens_per_s(self) -> float:
        return sum(t.completion_tokens for t in self.timings) / self.wall_s

    def summary(self) -> dict:
        ttft = [t.ttft_s * 1000 for t in self.timings]
        itl = [g * 1000 for t in self.timings for g in t.itl_s]
        e2e = [t.e2e_s * 1000 for t in self.timings]
        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "throughput_tok_s": round(self.tokens_per_s, 2),
            "requests_per_s": round(self.requests / self.wall_s, 3),
            "ttft_ms_p50": round(percentile(ttft, 50), 1),
            "ttft_ms_p99": round(percentile(ttft, 99), 1),
            "itl_ms_p50": round(percentile(itl, 50), 2),
            "itl_ms_p99": round(percentile(itl, 99), 2),
            "e2e_ms_p50": round(percentile(e2e, 50), 1),
            "e2e_ms_p99": round(percentile(e2e, 99), 1),
        } | {
            f"{part}_cpu_ms_per_token": round(seconds * 1000 / tokens, 3)
            for part, seconds in self.cpu_s.items()
            if (tokens := sum(t.completion_tokens for t in self.timings))
        }


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[max(min(int(p) - 1, 98), 0)]


async def one_stream(client: httpx.AsyncClient, url: str, body: dict) -> RequestTiming:
    start = time.perf_counter()
    first = last = None
    gaps: list[float] = []
    tokens = 0
    async with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            choices = event.get("choices") or []
            if not choices:
                continue
            piece = choices[0].get("delta", {}).get("content") or choices[0].get("text")
            if not piece:
                continue
            now = time.perf_counter()
            if first is None:
                first = now
            else:
                gaps.append(now - last)
            last = now
    end = time.perf_counter()
    return RequestTiming((first or end) - start, gaps, end - start, tokens)


async def one_request(client: httpx.AsyncClient, url: str, body: dict) -> RequestTiming:
    """Non-streaming: the first token is known only with the whole answer."""
    start = time.perf_counter()
    response = await client.post(url, json=body)
    response.raise_for_status()
    end = time.perf_counter()
    return RequestTiming(end - start, [], end - start, response.json()["usage"]["completion_tokens"])


async def run_level(
    url: str, bodies: list[dict], concurrency: int, headers: dict[str, str] | None = None
) -> LevelResult:
    """`bodies` POSTed to `url` in order by `concurrency` clients, with `headers` on every request."""
    queue: asyncio.Queue = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    result = LevelResult(concurrency, len(bodies), 0.0)

    async def worker() -> None:
        # A client (one keep-alive connection) per slot: one client's pool shared by 64 slots cost
        # the generator 8 CPU-ms a request, taken from the two cores the server under test has.
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(timeout=600, limits=limits, headers=headers) as client:
            while not queue.empty():
                body = queue.get_nowait()
                send = one_stream if body.get("stream") else one_request
                result.timings.append(await send(client, url, body))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.wall_s = time.perf_counter() - start
    return result
