"""A model that served streams must still unload: a role change (and a clean Triton exit) waits
for it. Real Triton, the simulated engine's model, and the gateway's own Triton client. Triton
2.51 keeps a decoupled model alive for good when the client cancels a stream just after its final
response; the client must let an answered stream end by itself."""

import asyncio
import time
from pathlib import Path

import psutil
import pytest
import tritonclient.grpc.aio as triton_aio

from kvmesh.net import free_ports
from kvmesh.v1 import worker_pb2
from services.gateway.engine_client import TritonPool
from services.worker import model_config, triton_server

REPOSITORY = Path(__file__).parents[2] / "triton_models"
MODEL = "sim"
# A few tokens each: the race is at a stream's end, so many short streams meet it often.
REQUESTS, CONCURRENCY, MAX_TOKENS = 80, 4, 4


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    grpc_port, http_port, metrics_port = free_ports(3, "127.0.0.1")
    log = tmp_path_factory.mktemp("unload") / "triton.log"
    process = triton_server.start(
        REPOSITORY, "127.0.0.1", triton_server.TritonPorts(grpc_port, http_port, metrics_port), {}, log
    )
    yield process, f"127.0.0.1:{grpc_port}"
    process.terminate()
    assert process.wait(40) == 0, log.read_text()[-3000:]


async def serve_and_unload(process, address: str, chunks_read: int | None) -> float | None:
    """Loads the model, streams REQUESTS through TritonPool reading `chunks_read` chunks of each
    (None: to the final), unloads; returns how long the stubs took to exit (None: still there)."""
    client = triton_aio.InferenceServerClient(address)
    pool = TritonPool()
    try:
        deadline = time.monotonic() + 60
        while not await _live(client):
            assert time.monotonic() < deadline, "Triton did not come up"
            await asyncio.sleep(0.1)
        await client.load_model(MODEL, config=model_config.with_engine_args(model_config.read(REPOSITORY / MODEL), {}))
        stubs = triton_server.stub_processes(process.pid)
        worker = worker_pb2.WorkerRecord(id="w-unload", triton_grpc_address=address, triton_model=MODEL)
        sampling = {"max_tokens": MAX_TOKENS, "ignore_eos": True}
        answers = []

        async def one(n: int) -> None:
            prompt = [1000 + n + i for i in range(32)]
            read = 0
            async for chunk in pool.stream(worker, f"r{n}", prompt, sampling, {}):
                read += 1
                if chunk.finish_reason or read == chunks_read:
                    answers.append(chunk.finish_reason)
                    break  # what the gateway does at the final response, or when its client leaves

        for first in range(0, REQUESTS, CONCURRENCY):
            await asyncio.gather(*(one(n) for n in range(first, first + CONCURRENCY)))
        assert len(answers) == REQUESTS
        assert answers.count("length") == (REQUESTS if chunks_read is None else 0)
        started = time.monotonic()
        await client.unload_model(MODEL)
        _, alive = await asyncio.to_thread(psutil.wait_procs, stubs, 20)
        return None if alive else time.monotonic() - started
    finally:
        await pool.close()
        await client.close()


async def _live(client) -> bool:
    try:
        return await client.is_server_live()
    except Exception:  # noqa: BLE001 - not listening yet
        return False


@pytest.mark.parametrize("chunks_read", [None, 2], ids=["read-to-the-final-response", "client-left-early"])
def test_a_model_that_served_streams_unloads(triton, chunks_read):
    process, address = triton
    took = asyncio.run(serve_and_unload(process, address, chunks_read))
    assert took is not None, f"{MODEL}'s stub still runs 20s after its unload"
