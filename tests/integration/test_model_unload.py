"""A model that served streams must still unload: a role change (and a clean Triton exit) waits
for it. Real Triton, the simulated engine's model, and the gateway's own Triton client. Triton
2.51 keeps a decoupled model alive for good when the client cancels a stream just after its final
response; the client must let an answered stream end by itself."""

import asyncio
import time

import psutil
import pytest
import tritonclient.grpc.aio as triton_aio

from kvmesh.v1 import worker_pb2
from services.gateway.engine_client import TritonPool
from services.worker import triton_server
from tests.integration.conftest import ADMIN, load_sim
from tests.integration.conftest import SIM_MODEL as MODEL

# A few tokens each: the race is at a stream's end, so many short streams meet it often.
REQUESTS, CONCURRENCY, MAX_TOKENS = 80, 4, 4


async def serve_and_unload(process, address: str, chunks_read: int | None, mux: bool) -> float | None:
    """Loads the model, streams REQUESTS through TritonPool (their tokens by a mux or not) reading
    `chunks_read` chunks of each (None: to the final), unloads (a mux ends when idle); returns how
    long the stubs took to exit (None: still there)."""
    client = triton_aio.InferenceServerClient(address)
    pool = TritonPool(mux=mux)
    try:
        await load_sim(client)
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
        await client.unload_model(MODEL, headers=ADMIN)
        _, alive = await asyncio.to_thread(psutil.wait_procs, stubs, 20)
        return None if alive else time.monotonic() - started
    finally:
        await pool.close()
        await client.close()


@pytest.mark.parametrize("mux", [True, False], ids=["mux", "own-streams"])
@pytest.mark.parametrize("chunks_read", [None, 2], ids=["read-to-the-final-response", "client-left-early"])
def test_a_model_that_served_streams_unloads(triton, chunks_read, mux):
    process, address = triton
    took = asyncio.run(serve_and_unload(process, address, chunks_read, mux))
    assert took is not None, f"{MODEL}'s stub still runs 20s after its unload"
