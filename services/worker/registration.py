"""The worker in the registry: its record (what the routers and the planner see of it), registered
under a lease that the heartbeat renews; the heartbeat also marks the record unresponsive while
Triton does not answer (liveness.py) and takes up the planner's role-change requests. On the way
out it drains (routers send it nothing new; what was routed to it finishes), then leaves the
registry."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError
from tritonclient.grpc import model_config_pb2

from kvmesh import load_keys, registry
from kvmesh.net import hostport
from kvmesh.v1 import worker_pb2
from services.worker import model_config
from services.worker.config import WorkerSettings
from services.worker.kv_events_relay import Endpoints
from services.worker.liveness import EngineLiveness
from services.worker.triton_server import TritonPorts

log = logging.getLogger("kvmesh.worker")
# How long a stopping worker waits for the requests routed to it (the supervisor kills at 45 s).
EXIT_DRAIN_S = 10.0


def describe(
    settings: WorkerSettings, worker_id: str, triton_model: str, config: model_config_pb2.ModelConfig,
    overrides: dict[str, Any], ports: TritonPorts, relayed: Endpoints | None,
) -> worker_pb2.WorkerRecord:  # fmt: skip
    """The record of `triton_model` (its model config, with the worker's engine overrides) served
    by this worker's Triton, every address the advertised one; the KV events where `relayed`
    republishes them, if it does."""
    args = {**model_config.engine_args(config), **overrides}
    kv_events = _kv_events(args)
    if kv_events and relayed is not None:
        kv_events = {"endpoint": relayed.events, "replay_endpoint": relayed.replay}
    return worker_pb2.WorkerRecord(
        id=worker_id,
        model=settings.name_served,
        role=model_config.role(config),
        triton_grpc_address=hostport(settings.advertise_host, ports.grpc),
        triton_model=triton_model,
        kv_block_size=model_config.block_size(config, args),
        capacity=int(args.get("max_num_seqs", 16)),
        max_model_len=int(args.get("max_model_len", 4096)),
        kv_events_endpoint=kv_events.get("endpoint", ""),
        kv_events_replay_endpoint=kv_events.get("replay_endpoint") or "",
        started_unix_ms=registry.now_ms(),
        labels={"engine": triton_model},
        triton_metrics_address=hostport(settings.advertise_host, ports.metrics),
    )


def _kv_events(engine_args: dict) -> dict:
    config = engine_args.get("kv_events_config") or {}
    return config if config.get("enable_kv_cache_events") else {}


@dataclass
class Registration:
    settings: WorkerSettings
    reg: registry.Registry
    worker_id: str
    # What register() and the heartbeat register.
    record: worker_pb2.WorkerRecord | None = None

    async def register(self) -> None:
        await self.reg.register(self.record, self.settings.lease_ms)

    async def heartbeat(
        self, triton: subprocess.Popen, change_to: Callable[[str], Awaitable[None]], engine: EngineLiveness
    ) -> None:
        """Renews the lease while Triton runs (also while a role change does), marks the record
        unresponsive while `engine` says Triton does not answer (not asked during a role change,
        which unloads the model and registers as draining), and hands a requested model to
        `change_to`, one change at a time."""
        changing: asyncio.Task | None = None
        interval_s = self.settings.lease_ms / 3000
        while triton.poll() is None:
            beat = time.monotonic()
            if changing is None or changing.done():
                self._mark_unresponsive(not await engine.responsive(self.record.triton_model))
            try:
                await self.register()
                wanted = await self.reg.assignment(self.worker_id)
            except Exception as e:  # noqa: BLE001 - keep trying; the lease covers short outages
                log.warning("heartbeat failed: %s", e)
                wanted = None
            if changing is not None and changing.done() and changing.exception():
                raise changing.exception()
            if wanted and wanted != self.record.triton_model and (changing is None or changing.done()):
                changing = asyncio.create_task(change_to(wanted))
            await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - beat)))  # the probe's wait included
        raise SystemExit(f"tritonserver exited with code {triton.returncode}")

    def _mark_unresponsive(self, unresponsive: bool) -> None:
        """The record registered from now on, with `unresponsive` (a new record, as drain() makes)."""
        if self.record.unresponsive == unresponsive:
            return
        if unresponsive:
            log.warning("worker %s: Triton does not answer; registered unresponsive (routers send nothing new)",
                        self.worker_id)  # fmt: skip
        else:
            log.info("worker %s: Triton answers again; registered responsive", self.worker_id)
        marked = worker_pb2.WorkerRecord()
        marked.CopyFrom(self.record)
        marked.unresponsive = unresponsive
        self.record = marked

    async def routed_requests_done(self, poll_s: float = 0.2, timeout_s: float | None = None) -> None:
        """Waits (up to `timeout_s`, default drain_timeout_s) until the routers count no request on
        this worker: a disaggregated request routed here reaches this worker only once its prefill
        elsewhere is done, and the unload would not wait for it."""
        timeout_s = self.settings.drain_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                routed = await load_keys.routed_requests(self.reg.redis, self.worker_id)
            except (RedisError, OSError) as e:
                log.warning("worker %s: cannot read its routed requests (%s); unloading without", self.worker_id, e)
                return
            if routed == 0:
                return
            if time.monotonic() > deadline:
                log.warning("worker %s: %d routed requests still open after %.0fs", self.worker_id, routed,
                            timeout_s)  # fmt: skip
                return
            await asyncio.sleep(poll_s)

    async def drain(self, timeout_s: float | None = None) -> None:
        """Registers as draining: routers send nothing new here once they have re-read the registry.
        Then waits the settle time, for requests routed on an older view, and until the routers
        count no request here (up to `timeout_s`, default drain_timeout_s)."""
        draining = worker_pb2.WorkerRecord()
        draining.CopyFrom(self.record)
        draining.draining = True
        self.record = draining
        await self.register()
        await asyncio.sleep(self.settings.drain_settle_ms / 1000)
        await self.routed_requests_done(timeout_s=timeout_s)

    async def leave(self) -> None:
        """A stop (a scale-down, Ctrl-C): drains (Triton refuses every new request once it
        stops), then leaves the registry. Draining rather than leaving first: a gateway fails the
        requests of a worker that left (its lease ran out: dead or cut off), and moves them.
        Bounded: a count a dead gateway never released must not hold the stop up."""
        try:
            await self.drain(timeout_s=min(self.settings.drain_timeout_s, EXIT_DRAIN_S))
        except (RedisError, OSError) as e:
            log.warning("worker %s: could not drain (%s); leaving at once", self.worker_id, e)
        try:
            await self.reg.deregister(self.worker_id)
        except (RedisError, OSError) as e:
            log.warning("could not deregister %s: %s", self.worker_id, e)

    async def close(self) -> None:
        """Out of the registry whatever happened before (a failed start, a crash), and disconnected."""
        try:
            await self.reg.deregister(self.worker_id)
        except Exception as e:  # noqa: BLE001 - Redis gone: the lease expires on its own
            log.warning("could not deregister %s: %s", self.worker_id, e)
        await self.reg.redis.aclose()
