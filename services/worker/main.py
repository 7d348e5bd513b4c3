"""Start Triton, load the engine model, register in Redis, heartbeat; deregister on the way out."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import tritonclient.grpc.aio as triton_aio
import uvloop
from redis.exceptions import RedisError

from kvmesh import grpc_server, load_keys, registry
from kvmesh.net import free_ports
from kvmesh.settings import load
from kvmesh.v1 import worker_pb2
from services.worker import model_config, role_change, triton_server
from services.worker.config import WorkerSettings

log = logging.getLogger("kvmesh.worker")
# How long a stopping worker waits for the requests routed to it (the supervisor kills at 45 s).
EXIT_DRAIN_S = 10.0


async def wait_live(
    client: triton_aio.InferenceServerClient, process: subprocess.Popen, port: int, host: str, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise SystemExit(f"tritonserver exited with code {process.returncode} before it was live")
        try:
            # Asked only once the port listens: a gRPC call refused before that puts the channel
            # into a 1-s reconnect backoff, a second of every worker's start.
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            if await client.is_server_live():
                return
        except Exception:  # noqa: BLE001 - not listening yet
            pass
        if time.monotonic() > deadline:
            raise SystemExit("tritonserver did not become live in time")
        await asyncio.sleep(0.02)


async def load_engine(
    client: triton_aio.InferenceServerClient,
    process: subprocess.Popen,
    name: str,
    config_json: str,
    timeout_s: float,
) -> None:
    """Load through the repository API, failing fast if Triton dies while loading."""
    loading = asyncio.ensure_future(client.load_model(name, config=config_json, client_timeout=timeout_s))
    while not loading.done():
        if process.poll() is not None:
            loading.cancel()
            raise SystemExit(f"tritonserver exited with code {process.returncode} while loading {name}")
        await asyncio.wait({loading}, timeout=0.5)
    loading.result()


@dataclass
class _Worker:
    """What loading a model and registering it needs; `record` is what the heartbeat registers."""

    settings: WorkerSettings
    worker_id: str
    client: triton_aio.InferenceServerClient
    process: subprocess.Popen
    reg: registry.Registry
    address: str
    ports: triton_server.TritonPorts
    record: worker_pb2.WorkerRecord | None = None

    def config(self, triton_model: str):
        return model_config.read(self.settings.model_repository / triton_model)

    async def load(self, triton_model: str) -> worker_pb2.WorkerRecord:
        """Loads the engine model; returns its registration record."""
        settings, config = self.settings, self.config(triton_model)
        overrides = settings.engine_overrides(self.worker_id)
        log.info("loading %s (%s) on Triton at %s", triton_model, settings.model, self.address)
        config_json = model_config.with_engine_args(config, overrides)
        await load_engine(self.client, self.process, triton_model, config_json, settings.load_timeout_s)
        args = {**model_config.engine_args(config), **overrides}
        return worker_pb2.WorkerRecord(
            id=self.worker_id,
            model=settings.name_served,
            role=model_config.role(config),
            triton_grpc_address=self.address,
            triton_model=triton_model,
            kv_block_size=model_config.block_size(config, args),
            capacity=int(args.get("max_num_seqs", 16)),
            max_model_len=int(args.get("max_model_len", 4096)),
            kv_events_endpoint=_kv_events(args).get("endpoint", ""),
            kv_events_replay_endpoint=_kv_events(args).get("replay_endpoint") or "",
            started_unix_ms=registry.now_ms(),
            labels={"engine": triton_model, "triton_metrics": f"{settings.host}:{self.ports.metrics}"},
        )

    async def unload(self, triton_model: str) -> None:
        """Returns once the model's stub processes are gone: Triton finishes the requests in
        flight first, and reports the model unloaded before its instance is gone."""
        stubs = triton_server.stub_processes(self.process.pid)
        await self.client.unload_model(triton_model)
        timeout_s = self.settings.drain_timeout_s
        _, alive = await asyncio.to_thread(psutil.wait_procs, stubs, timeout_s)
        if alive:
            log.warning(
                "%s: %d stub processes still running %.0fs after its unload", triton_model, len(alive), timeout_s
            )

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

    async def register(self) -> None:
        await self.reg.register(self.record, self.settings.lease_ms)

    async def leave(self) -> None:
        """A stop (a scale-down, Ctrl-C): out of the registry first; then what was routed here on an
        older registry view (a gateway's is up to 500 ms old) and what the routers still count
        finish before Triton goes, as it refuses every new request once it stops. Bounded: a count
        a dead gateway never released must not hold the stop up."""
        try:
            await self.reg.deregister(self.worker_id)
        except (RedisError, OSError) as e:
            log.warning("could not deregister %s: %s", self.worker_id, e)
            return
        await asyncio.sleep(self.settings.drain_settle_ms / 1000)
        await self.routed_requests_done(timeout_s=min(self.settings.drain_timeout_s, EXIT_DRAIN_S))

    async def change_to(self, triton_model: str) -> None:
        """A role change (services/worker/role_change.py); the assignment is done with either way."""
        old = self.record
        try:
            role_change.check(old, model_config.role(self.config(triton_model)))
            self.record = worker_pb2.WorkerRecord()
            self.record.CopyFrom(old)
            self.record.draining = True
            await self.register()
            await asyncio.sleep(self.settings.drain_settle_ms / 1000)
            await self.routed_requests_done()
            self.record = await role_change.swap(self.unload, self.load, old.triton_model, triton_model)
            log.info("worker %s now runs %s (%s)", self.worker_id, triton_model, worker_pb2.Role.Name(self.record.role))
        except role_change.NothingLoaded:
            raise  # the heartbeat ends the worker: it must not stay registered
        except Exception as e:  # noqa: BLE001 - refused or failed: the worker serves as it was
            log.error("worker %s: no change to %s: %s", self.worker_id, triton_model, e)
            self.record = old
        await self.register()
        await self.reg.clear_assignment(self.worker_id)


async def run(settings: WorkerSettings) -> None:
    # Installed first: a stop during the (long) model load still shuts Triton down in order.
    stop = asyncio.create_task(grpc_server.wait_for_signal())
    # The mesh's other services may not have bound their ports yet (kvmesh up starts the gateway last).
    spare = iter(free_ports(4, settings.host, avoid=settings.reserved_ports))
    ports = triton_server.TritonPorts(
        grpc=settings.grpc_port or next(spare),
        http=settings.http_port or next(spare),
        metrics=settings.metrics_port or next(spare),
    )
    role = model_config.role(model_config.read(settings.model_repository / settings.triton_model))
    env = {"VLLM_CPU_OMP_THREADS_BIND": settings.cpus, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    if role != worker_pb2.ROLE_AGGREGATED:
        env |= _kv_transfer_env(settings.host, next(spare))
    process = triton_server.start(settings.model_repository, settings.host, ports, env, log_file=None)
    address = f"{settings.host}:{ports.grpc}"
    client = triton_aio.InferenceServerClient(address)
    redis_client = registry.connect(settings.redis_url)
    worker_id = settings.worker_id or f"w-{secrets.token_hex(3)}"
    worker = _Worker(settings, worker_id, client, process, registry.Registry(redis_client), address, ports)
    try:
        await wait_live(client, process, ports.grpc, settings.host, timeout_s=60)
        started = time.monotonic()
        loading = asyncio.ensure_future(worker.load(settings.triton_model))
        await asyncio.wait({loading, stop}, return_when=asyncio.FIRST_COMPLETED)
        if stop.done():
            loading.cancel()
            log.info("stopped while loading")
            return
        worker.record = record = loading.result()
        await worker.register()
        log.info(
            "worker %s ready in %.1fs: %s",
            worker_id,
            time.monotonic() - started,
            json.dumps(
                {
                    "model": record.model,
                    "role": worker_pb2.Role.Name(role),
                    "triton": address,
                    "block_size": record.kv_block_size,
                }
            ),  # fmt: skip
        )
        print(f"worker {worker_id} ready: model {record.model} on Triton {address}", flush=True)
        heartbeat = asyncio.create_task(_heartbeat(worker))
        done, _ = await asyncio.wait({heartbeat, stop}, return_when=asyncio.FIRST_COMPLETED)
        heartbeat.cancel()
        if heartbeat in done and not heartbeat.cancelled() and heartbeat.exception():
            raise heartbeat.exception()
        await worker.leave()
    finally:
        stop.cancel()
        try:
            await worker.reg.deregister(worker_id)
        except Exception as e:  # noqa: BLE001 - Redis gone: the lease expires on its own
            log.warning("could not deregister %s: %s", worker_id, e)
        await client.close()
        await redis_client.aclose()
        _stop_triton(process)
        for endpoint in settings.kv_events_endpoints(worker_id) if settings.kv_events else ():
            Path(endpoint.removeprefix("ipc://")).unlink(missing_ok=True)  # the engine died before unbinding


def _kv_transfer_env(host: str, side_channel_port: int) -> dict[str, str]:
    """Where a prefill/decode engine's KV transfer listens: NIXL's side channel on this worker's
    own port, UCX on loopback when the worker is (UCX listens on every interface otherwise); the
    KV cache on transparent huge pages (PyTorch's CPU allocator), which doubles what NIXL reads
    from another process here: UCX's CMA pins the remote pages of every read (bench.kv_transfer)."""
    env = {
        "THP_MEM_ALLOC_ENABLE": "1",
        "VLLM_HOST_IP": host,
        "VLLM_NIXL_SIDE_CHANNEL_HOST": host,
        "VLLM_NIXL_SIDE_CHANNEL_PORT": str(side_channel_port),
    }
    if host in ("127.0.0.1", "::1", "localhost"):
        env["UCX_NET_DEVICES"] = "lo"
    return env


def _kv_events(engine_args: dict) -> dict:
    config = engine_args.get("kv_events_config") or {}
    return config if config.get("enable_kv_cache_events") else {}


async def _heartbeat(worker: _Worker) -> None:
    """Renews the lease (also while a role change runs) and takes up role-change requests."""
    changing: asyncio.Task | None = None
    while worker.process.poll() is None:
        try:
            await worker.register()
            wanted = await worker.reg.assignment(worker.worker_id)
        except Exception as e:  # noqa: BLE001 - keep trying; the lease covers short outages
            log.warning("heartbeat failed: %s", e)
            wanted = None
        if changing is not None and changing.done() and changing.exception():
            raise changing.exception()
        if wanted and wanted != worker.record.triton_model and (changing is None or changing.done()):
            changing = asyncio.create_task(worker.change_to(wanted))
        await asyncio.sleep(worker.settings.lease_ms / 3000)
    raise SystemExit(f"tritonserver exited with code {worker.process.returncode}")


def _stop_triton(process: subprocess.Popen) -> None:
    regions = triton_server.shm_regions(process.pid)
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    # Triton kills a stub whose model does not unload within its exit timeout, and then leaves
    # that stub's region behind.
    for region in regions:
        if region.exists():
            log.warning("removing %s, left behind by Triton", region.name)
            region.unlink(missing_ok=True)


def main() -> None:
    uvloop.run(run(load(WorkerSettings)))
