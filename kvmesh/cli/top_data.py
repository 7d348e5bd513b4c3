"""What `kvmesh top` shows: one reading of the mesh (the router's live workers, kvindex's blocks per
worker, the gateway's metrics, each worker's engine metrics on its Triton's metrics port), and a
frame computed from two consecutive readings, its rates over the interval between them.

Only the router is required (it names the workers): a source that does not answer leaves its
figures unknown (None, shown "–") and says so in `problems`."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import grpc
import httpx

from kvmesh.auth import bearer
from kvmesh.metrics_text import Histogram, Scrape, increase
from kvmesh.tls import MutualTls, blocking_channel
from kvmesh.v1 import kvindex_pb2, kvindex_pb2_grpc, router_pb2, router_pb2_grpc, worker_pb2

# The engines' own metrics (the Triton model's pb_utils.MetricFamily), next to Triton's nv_* ones.
KV_USAGE = "kvmesh_engine_kv_usage_ratio"
RUNNING = "kvmesh_engine_running_sequences"
WAITING = "kvmesh_engine_waiting_sequences"
HIT_TOKENS = "kvmesh_engine_prefix_cache_hit_tokens"
PROMPT_TOKENS = "kvmesh_engine_prompt_tokens"


class RouterUnreachable(Exception):
    pass


@dataclass(frozen=True)
class Worker:
    id: str
    model: str
    role: str
    in_flight: int
    capacity: int
    lease_s: float
    state: str  # "", "draining" or "unresponsive"
    metrics_address: str  # host:port of its Triton's metrics, "" if not registered


@dataclass(frozen=True)
class Reading:
    at: float  # time.monotonic()
    workers: tuple[Worker, ...]
    index_blocks: dict[str, int] | None  # None: kvindex did not answer
    gateway: Scrape | None
    engines: dict[str, Scrape]  # worker id → its engine's metrics, for the workers that answered
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class WorkerRow:
    worker: Worker
    running: float | None
    waiting: float | None
    kv_usage: float | None  # 0-1
    index_blocks: int | None
    hit_ratio: float | None  # its engine's prefix-cache hit tokens / prompt tokens over the interval


@dataclass(frozen=True)
class Rates:
    interval_s: float
    requests_per_s: dict[str, float]  # by status; those with none in the interval left out
    prompt_tokens_per_s: float | None
    completion_tokens_per_s: float | None
    ttft_s: tuple[float, float] | None  # p50, p99; None: no first token in the interval
    itl_s: tuple[float, float] | None
    cache_hit_ratio: float | None  # the gateway's cached / prompt tokens, every worker together
    in_flight: float | None


@dataclass(frozen=True)
class Frame:
    workers: tuple[WorkerRow, ...]
    rates: Rates | None  # None until two readings of the gateway's metrics
    problems: tuple[str, ...]


class MeshReader:
    """The connections `kvmesh top` keeps open between readings."""

    def __init__(self, router: str, kvindex: str, gateway_metrics: str, tls: MutualTls | None, admin_key: str):
        self.router, self.kvindex, self.gateway_metrics = router, kvindex, gateway_metrics
        self._metadata = bearer(admin_key)
        self._open = contextlib.ExitStack()
        self._router = router_pb2_grpc.RouterStub(self._open.enter_context(blocking_channel(router, tls)))
        self._kvindex = kvindex_pb2_grpc.KvIndexStub(self._open.enter_context(blocking_channel(kvindex, tls)))
        # The gateway serves HTTPS with the mesh's certificates; Triton's metrics port is plain HTTP.
        self._gateway_http = self._open.enter_context(
            httpx.Client(timeout=2.0, verify=tls.client_ssl_context() if tls else True)
        )
        self._engine_http = self._open.enter_context(httpx.Client(timeout=0.5))

    def __enter__(self) -> MeshReader:
        return self

    def __exit__(self, *_) -> None:
        self._open.close()

    def read(self) -> Reading:
        try:
            reply = self._router.Workers(router_pb2.WorkersRequest(), timeout=3, metadata=self._metadata)
        except grpc.RpcError as e:
            raise RouterUnreachable(f"router at {self.router}: {e.details()}") from None
        workers = tuple(_worker(w) for w in reply.workers)
        problems: list[str] = []
        try:
            stats = self._kvindex.Stats(kvindex_pb2.StatsRequest(), timeout=3, metadata=self._metadata)
            index_blocks: dict[str, int] | None = {s.worker_id: s.blocks for s in stats.workers}
        except grpc.RpcError as e:
            index_blocks = None
            problems.append(f"kvindex at {self.kvindex}: {e.details()}")
        try:
            gateway: Scrape | None = _scrape(self._gateway_http, self.gateway_metrics)
        except (httpx.HTTPError, ValueError) as e:
            gateway = None
            problems.append(f"gateway metrics at {self.gateway_metrics}: {str(e) or type(e).__name__}")
        engines = {}
        for w in workers:  # one that does not answer shows "–" for its engine's figures
            with contextlib.suppress(httpx.HTTPError, ValueError):
                if w.metrics_address:
                    engines[w.id] = _scrape(self._engine_http, f"http://{w.metrics_address}/metrics")
        return Reading(time.monotonic(), workers, index_blocks, gateway, engines, tuple(problems))


def frame(now: Reading, before: Reading | None) -> Frame:
    rows = tuple(_row(w, now, before) for w in now.workers)
    rates = None
    if before and before.gateway and now.gateway:
        rates = _rates(now.gateway, before.gateway, now.at - before.at)
    return Frame(rows, rates, now.problems)


def _worker(status: router_pb2.WorkerStatus) -> Worker:
    r = status.record
    return Worker(
        id=r.id,
        model=r.model,
        role=worker_pb2.Role.Name(r.role).removeprefix("ROLE_").lower(),
        in_flight=status.in_flight,
        capacity=r.capacity,
        lease_s=status.lease_remaining_ms / 1000,
        state="unresponsive" if r.unresponsive else "draining" if r.draining else "",
        metrics_address=r.triton_metrics_address,
    )


def _scrape(client: httpx.Client, url: str) -> Scrape:
    return Scrape.parse(client.get(url).raise_for_status().text)


def _row(worker: Worker, now: Reading, before: Reading | None) -> WorkerRow:
    engine = now.engines.get(worker.id)
    engine_before = before.engines.get(worker.id) if before else None
    hit_ratio = None
    if engine and engine_before:
        hits = increase(engine.total(HIT_TOKENS), engine_before.total(HIT_TOKENS))
        prompt = increase(engine.total(PROMPT_TOKENS), engine_before.total(PROMPT_TOKENS))
        hit_ratio = hits / prompt if hits is not None and prompt else None
    usage = engine.values(KV_USAGE) if engine else {}
    return WorkerRow(
        worker=worker,
        running=engine.total(RUNNING) if engine else None,
        waiting=engine.total(WAITING) if engine else None,
        kv_usage=max(usage.values()) if usage else None,
        index_blocks=now.index_blocks.get(worker.id, 0) if now.index_blocks is not None else None,
        hit_ratio=hit_ratio,
    )


def _rates(now: Scrape, before: Scrape, interval_s: float) -> Rates:
    def per_s(name: str) -> float | None:
        change = increase(now.total(name), before.total(name))
        return change / interval_s if change is not None else None

    requests = "kvmesh_gateway_requests"
    statuses = before.by_label(requests, "status")
    by_status = {}
    for status, count in sorted(now.by_label(requests, "status").items()):
        change = increase(count, statuses.get(status, 0.0))
        if change:
            by_status[status] = change / interval_s
    cached = increase(now.total("kvmesh_gateway_cached_tokens"), before.total("kvmesh_gateway_cached_tokens"))
    prompt = increase(now.total("kvmesh_gateway_prompt_tokens"), before.total("kvmesh_gateway_prompt_tokens"))
    return Rates(
        interval_s=interval_s,
        requests_per_s=by_status,
        prompt_tokens_per_s=per_s("kvmesh_gateway_prompt_tokens"),
        completion_tokens_per_s=per_s("kvmesh_gateway_completion_tokens"),
        ttft_s=_p50_p99(now.histogram("kvmesh_gateway_ttft_seconds"), before.histogram("kvmesh_gateway_ttft_seconds")),
        itl_s=_p50_p99(now.histogram("kvmesh_gateway_itl_seconds"), before.histogram("kvmesh_gateway_itl_seconds")),
        cache_hit_ratio=cached / prompt if cached is not None and prompt else None,
        in_flight=now.total("kvmesh_gateway_in_flight"),
    )


def _p50_p99(now: Histogram | None, before: Histogram | None) -> tuple[float, float] | None:
    if now is None:
        return None
    interval = now.minus(before)
    p50, p99 = interval.quantile(0.5), interval.quantile(0.99)
    return None if math.isnan(p50) else (p50, p99)
