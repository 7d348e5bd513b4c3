"""settings → dependencies → serve gRPC and HTTP in one event loop."""

from __future__ import annotations

import asyncio
import logging

import uvicorn
import uvloop

from kvmesh import grpc_server, registry, telemetry
from kvmesh.settings import load
from kvmesh.tls import MutualTls
from kvmesh.v1 import inference_pb2_grpc, models_pb2_grpc
from services.gateway.config import GatewaySettings
from services.gateway.engine_client import TritonPool
from services.gateway.generation import Generator
from services.gateway.openai.routes import create_app
from services.gateway.openai.serving import OpenAIServing
from services.gateway.router_client import RouterClient
from services.gateway.served import ServedModels
from services.gateway.servicer import InferenceServicer, ModelsServicer

log = logging.getLogger("kvmesh.gateway")


async def run(settings: GatewaySettings) -> None:
    telemetry.setup_tracing("gateway")
    tls = MutualTls.of(settings)
    redis_client = registry.connect(settings.redis_url, tls=tls)
    watcher = registry.Watcher(registry.Registry(redis_client), settings.refresh_ms / 1000)
    await watcher.start()
    served = ServedModels(settings.models, watcher)
    router = RouterClient(settings.router_address, tls)
    engines = TritonPool(mux=settings.mux, tls=tls)
    watcher.on_change(lambda: engines.fail_workers_gone(watcher.workers))
    generator = Generator(
        router, engines, served, settings.prefill_timeout_s, settings.max_migrations, settings.whole_answer_interval_ms
    )

    limits = settings.input_limits()

    def register(server) -> None:
        inference_pb2_grpc.add_InferenceServicer_to_server(
            InferenceServicer(served, generator, settings.default_max_tokens, limits), server
        )
        models_pb2_grpc.add_ModelsServicer_to_server(ModelsServicer(served), server)

    grpc_served = await grpc_server.serve(
        "gateway", settings.host, settings.grpc_port, register, tls, max_message_bytes=settings.max_body_bytes
    )
    openai_serving = OpenAIServing(served, generator, settings.default_max_tokens, limits)
    app = create_app(served, openai_serving, settings.max_body_bytes)
    http = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.http_port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            # Longer than clients keep idle connections (httpx, and so the openai client: 5 s): else a
            # client may reuse a connection the moment the server closes it, and the request fails.
            timeout_keep_alive=settings.http_keep_alive_s,
        )
    )
    serving = asyncio.create_task(http.serve())  # uvicorn handles SIGINT/SIGTERM and returns
    while not http.started and not serving.done():
        await asyncio.sleep(0.02)
    if http.started:
        port = http.servers[0].sockets[0].getsockname()[1]
        print(
            f"gateway ready: http://{settings.host}:{port} (OpenAI), grpc {settings.host}:{grpc_served.port}",
            flush=True,
        )
    try:
        await serving
    finally:
        await grpc_server.drain(grpc_served, grace_s=5.0)
        await router.close()
        await engines.close()
        await watcher.stop()
        await redis_client.aclose()


def main() -> None:
    uvloop.run(run(load(GatewaySettings)))
