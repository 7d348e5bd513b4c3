"""settings → dependencies → run: start Triton (triton_server.py), load the engine model, register
and heartbeat (registration.py), change roles when asked (role_change.py); on the way out leave
the registry, then stop Triton."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import uvloop

from kvmesh import grpc_server, registry
from kvmesh.net import free_ports, interface_of, is_loopback
from kvmesh.settings import load
from kvmesh.tls import MutualTls
from kvmesh.v1 import worker_pb2
from services.worker import model_config, role_change, triton_server
from services.worker.config import WorkerSettings
from services.worker.kv_events_relay import Endpoints, KvEventsRelay
from services.worker.liveness import EngineLiveness
from services.worker.registration import Registration, describe
from services.worker.triton_server import Triton, TritonPorts

log = logging.getLogger("kvmesh.worker")


async def run(settings: WorkerSettings) -> None:
    # Installed first: a stop during the (long) model load still shuts Triton down in order.
    stop = asyncio.create_task(grpc_server.wait_for_signal())
    # The mesh's other services may not have bound their ports yet (kvmesh up starts the gateway last).
    spare = iter(free_ports(6, settings.host, avoid=settings.reserved_ports))
    ports = TritonPorts(
        grpc=settings.grpc_port or next(spare),
        http=settings.http_port or next(spare),
        metrics=settings.metrics_port or next(spare),
    )
    admin_key, tls = secrets.token_urlsafe(32), MutualTls.of(settings)  # a new key for each Triton this worker starts
    engine_env = _engine_env(settings, spare)
    process = triton_server.start(settings.model_repository, settings.host, ports, engine_env, None, admin_key, tls)
    triton = Triton(process, settings.local_host, ports, admin_key, tls)
    worker_id = settings.worker_id or f"w-{secrets.token_hex(3)}"
    registration = Registration(settings, registry.Registry(registry.connect(settings.redis_url, tls=tls)), worker_id)
    relay: KvEventsRelay | None = None
    relaying: asyncio.Task | None = None

    async def load_model(triton_model: str) -> worker_pb2.WorkerRecord:
        """Loads the engine model; returns its registration record."""
        config = model_config.read(settings.model_repository / triton_model)
        overrides = settings.engine_overrides(worker_id)
        log.info("loading %s (%s) on Triton at %s", triton_model, settings.model, triton.address)
        await triton.load(triton_model, model_config.with_engine_args(config, overrides), settings.load_timeout_s)
        return describe(settings, worker_id, triton_model, config, overrides, ports, relay.public if relay else None)

    async def unload_model(triton_model: str) -> None:
        await triton.unload(triton_model, settings.drain_timeout_s)

    async def change_to(triton_model: str) -> None:
        await role_change.change(registration, triton_model, unload_model, load_model)

    try:
        if settings.relays_kv_events:
            engine_endpoints = Endpoints(*settings.kv_events_endpoints(worker_id))
            relay_ports = (settings.kv_events_port or next(spare), settings.kv_events_replay_port or next(spare))
            relay = KvEventsRelay(engine_endpoints, settings.local_host, settings.advertise_host, *relay_ports)
        relaying = asyncio.create_task(relay.run()) if relay else None
        await triton.wait_live(timeout_s=60)
        started = time.monotonic()
        loading = asyncio.ensure_future(load_model(settings.triton_model))
        await asyncio.wait({loading, stop}, return_when=asyncio.FIRST_COMPLETED)
        if stop.done():
            loading.cancel()
            log.info("stopped while loading")
            return
        registration.record = record = loading.result()
        await registration.register()
        ready = {"model": record.model, "role": worker_pb2.Role.Name(record.role), "triton": triton.address,
                 "block_size": record.kv_block_size}  # fmt: skip
        log.info("worker %s ready in %.1fs: %s", worker_id, time.monotonic() - started, json.dumps(ready))
        print(f"worker {worker_id} ready: model {record.model} on Triton {triton.address}", flush=True)
        heartbeat = asyncio.create_task(registration.heartbeat(process, change_to, EngineLiveness(triton.client)))
        # A relay that stops ends the worker: kvindex would silently lose its KV events.
        critical = {heartbeat} | ({relaying} if relaying else set())
        done, _ = await asyncio.wait(critical | {stop}, return_when=asyncio.FIRST_COMPLETED)
        heartbeat.cancel()
        for task in critical & done:
            if not task.cancelled() and task.exception():
                raise task.exception()
        await registration.leave()
    finally:
        stop.cancel()
        await registration.close()
        await triton.close()
        if relaying:
            relaying.cancel()
            await asyncio.gather(relaying, return_exceptions=True)
        for endpoint in settings.kv_events_endpoints(worker_id) if settings.kv_events else ():
            Path(endpoint.removeprefix("ipc://")).unlink(missing_ok=True)  # the engine died before unbinding


def _engine_env(settings: WorkerSettings, spare: Iterator[int]) -> dict[str, str]:
    """The engine's environment: its cores, and for a prefill/decode engine where its KV transfer
    listens: NIXL's side channel on the advertised address (the peer dials what the prefill's
    answer names), UCX on the interface of that address (it listens on every interface
    otherwise), unless the operator chose UCX's devices; the KV cache on transparent huge pages
    (PyTorch's CPU allocator), which doubles what NIXL reads from another process here: UCX's
    CMA pins the remote pages of every read (bench.kv_transfer)."""
    env = {"VLLM_CPU_OMP_THREADS_BIND": settings.cpus, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    role = model_config.role(model_config.read(settings.model_repository / settings.triton_model))
    if role == worker_pb2.ROLE_AGGREGATED:
        return env
    host = settings.advertise_host
    env |= {
        "THP_MEM_ALLOC_ENABLE": "1",
        "VLLM_HOST_IP": host,
        "VLLM_NIXL_SIDE_CHANNEL_HOST": host,
        "VLLM_NIXL_SIDE_CHANNEL_PORT": str(settings.nixl_port or next(spare)),
    }
    if "UCX_NET_DEVICES" not in os.environ:
        device = "lo" if is_loopback(settings.local_host) else interface_of(settings.local_host)
        if device:
            env["UCX_NET_DEVICES"] = device
        else:
            log.warning("no interface holds %s: UCX listens on every interface (set UCX_NET_DEVICES)",
                        settings.local_host)  # fmt: skip
    return env


def main() -> None:
    uvloop.run(run(load(WorkerSettings)))
