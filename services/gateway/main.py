"""settings → dependencies → serve gRPC and HTTP in one event loop; on SIGTERM or SIGINT, drain
both: new requests refused (the HTTP listener closed, gRPC health NOT_SERVING and new calls
UNAVAILABLE), the ones in flight finished (up to --drain-timeout-s), then exit 0. One process of
--procs N (procs.py, where it starts)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING

import uvicorn

from kvmesh import auth, grpc_server, registry, telemetry
from kvmesh.announce import Announcement
from kvmesh.api_keys import ApiKey, KeyStore
from kvmesh.quota import Quotas
from kvmesh.routing.assemble import assemble
from kvmesh.tls import FrontTls, MutualTls, install_sighup
from kvmesh.v1 import inference_pb2_grpc, keys_pb2_grpc, models_pb2_grpc
from services.gateway import request_log
from services.gateway.admission import Admission
from services.gateway.config import GatewaySettings
from services.gateway.engine_client import TritonPool
from services.gateway.front_door import FrontDoor
from services.gateway.generation import Generator
from services.gateway.key_metrics import KeyMetrics
from services.gateway.keys_servicer import KeysServicer
from services.gateway.openai.routes import create_app
from services.gateway.openai.serving import OpenAIServing
from services.gateway.router_client import RouterClient
from services.gateway.routing import Routing
from services.gateway.served import ServedModels
from services.gateway.servicer import InferenceServicer, ModelsServicer

if TYPE_CHECKING:
    from services.gateway.procs import Process

log = logging.getLogger("kvmesh.gateway")


class _HttpServer(uvicorn.Server):
    """uvicorn without its own signal handling: a signal drains gRPC and HTTP together here, and
    uvicorn would raise the signal again once HTTP had stopped, killing the process mid-drain."""

    def capture_signals(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()


async def run(settings: GatewaySettings, process: Process) -> None:
    stop = asyncio.create_task(grpc_server.wait_for_signal())  # first: a stop while starting drains too
    telemetry.setup_tracing("gateway")
    logging.getLogger(request_log.LOGGER).setLevel(logging.INFO if settings.log_requests else logging.WARNING)
    tls = MutualTls.of(settings)  # the mesh's hops: with --tls-ca
    front_tls = FrontTls.of(settings, api_keys=settings.auth_enabled)  # the client-facing ports
    redis_client = registry.connect(settings.redis_url, tls=tls)
    watcher = registry.Watcher(registry.Registry(redis_client), settings.refresh_ms / 1000)
    await watcher.start()
    served = ServedModels(settings.models, watcher)
    keys, quotas = KeyStore(redis_client), Quotas(redis_client)
    authenticator = None
    if settings.auth_enabled:
        authenticator = auth.Authenticator(keys, auth.mesh_token(required=True))
        if admin_key := os.environ.get(auth.ADMIN_KEY_ENV):
            await keys.ensure(ApiKey(name="admin", role="admin"), admin_key)
    router = Routing(
        lambda on_settings: RouterClient(settings.router_address, tls, auth.mesh_token(required=False), on_settings),
        lambda config: assemble(config, settings.redis_url, tls, watcher),
        settings.route_in_process_below,
    )
    engines = TritonPool(mux=settings.mux, tls=tls, stall_timeout_s=settings.stall_timeout_s)
    watcher.on_change(lambda: engines.fail_workers_gone(watcher.workers))
    generator = Generator(
        router, engines, served, settings.prefill_timeout_s, settings.max_migrations, settings.whole_answer_interval_ms,
        lambda: Admission(settings.max_queued, settings.queue_timeout_s), settings.request_timeout_s,
    )  # fmt: skip
    front = FrontDoor(generator, quotas if authenticator else None, KeyMetrics(settings.metrics_max_keys))
    limits = settings.input_limits()

    def register(server) -> None:
        write_timeout_s = settings.stream_write_timeout_s
        inference = InferenceServicer(served, front, settings.default_max_tokens, limits, write_timeout_s)
        inference_pb2_grpc.add_InferenceServicer_to_server(inference, server)
        models_pb2_grpc.add_ModelsServicer_to_server(ModelsServicer(served), server)
        keys_pb2_grpc.add_KeysServicer_to_server(KeysServicer(keys, quotas, auth_on=authenticator is not None), server)

    grpc_served = await grpc_server.serve(
        "gateway", settings.host, settings.grpc_port, register, tls, max_message_bytes=settings.max_body_bytes,
        interceptors=[auth.AuthInterceptor(authenticator)] if authenticator else [],
        credentials=front_tls.grpc_credentials() if front_tls else None,
    )  # fmt: skip
    openai_serving = OpenAIServing(served, front, settings.default_max_tokens, limits, settings.stream_write_timeout_s)
    app = process.serving_metrics(create_app(served, openai_serving, settings.max_body_bytes, authenticator))
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.http_port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        # Longer than clients keep idle connections (httpx, and so the openai client: 5 s): else a
        # client may reuse a connection the moment the server closes it, and the request fails.
        timeout_keep_alive=settings.http_keep_alive_s,
        timeout_graceful_shutdown=settings.drain_timeout_s,  # then the streams left are cancelled
        **(front_tls.uvicorn_kwargs() if front_tls else {}),
    )
    http = _HttpServer(config)
    if front_tls:
        install_sighup()
        reloading = asyncio.create_task(front_tls.watch(config))
    serving = asyncio.create_task(http.serve(process.http_sockets(settings.host, settings.http_port)))
    while not http.started and not serving.done():
        await asyncio.sleep(0.02)
    announcement = None
    if http.started:
        port = http.servers[0].sockets[0].getsockname()[1]
        scheme = "https" if front_tls else "http"
        announcement = Announcement.of(settings, "gateway", port, scheme).start()  # /metrics on the HTTP port
        print(
            f"gateway ready: {scheme}://{settings.host}:{port} (OpenAI), grpc {settings.host}:{grpc_served.port}"
            f"{' (TLS)' if front_tls else ''}, auth {'on' if authenticator else 'off'}{process.label}",
            flush=True,
        )
        process.start_others(port, grpc_served.port)
    try:
        await asyncio.wait({stop, serving}, return_when=asyncio.FIRST_COMPLETED)
        started = time.monotonic()
        print(f"gateway draining (up to {settings.drain_timeout_s:g}s){process.label}", flush=True)
        http.should_exit = True  # uvicorn closes its listener and idle connections, then waits
        await asyncio.gather(
            grpc_server.drain(grpc_served, grace_s=settings.drain_timeout_s), serving,
            process.drain_others(settings.drain_timeout_s),
        )  # fmt: skip
        print(f"gateway drained in {time.monotonic() - started:.1f}s{process.label}", flush=True)
    finally:
        stop.cancel()
        if announcement:
            await announcement.stop()
        if front_tls:
            reloading.cancel()
        await router.close()
        await engines.close()
        await quotas.aclose()  # the last requests' releases and usage, before the connection goes
        await watcher.stop()
        await redis_client.aclose()
