"""The mux (engines/mux.py) on a real Triton with the simulated engine's model, through the
gateway's own Triton client: the same tokens as one stream a request, in fewer responses; a
request naming no open mux, or alone on its worker, streams on its own; an idle mux ends and the
next one opens; requests leaving a mux early do not disturb the others on it."""

import asyncio
import contextlib

import numpy as np
import tritonclient.grpc.aio as triton_aio

from engines import mux as engine_mux
from kvmesh.v1 import worker_pb2
from services.gateway import metrics
from services.gateway.engine_client import TritonPool
from tests.integration.conftest import SIM_MODEL, load_sim

SAMPLING = {"max_tokens": 12, "ignore_eos": True}


def prompt(n: int) -> list[int]:
    return [2000 + 7 * n + i for i in range(40)]


async def generate(pool: TritonPool, worker, n: int) -> list[int]:
    tokens = []
    async for chunk in pool.stream(worker, f"req-{n}-{id(pool)}", prompt(n), SAMPLING, {}):
        tokens += chunk.token_ids
        if chunk.finish_reason:
            assert chunk.finish_reason == "length" and chunk.prompt_tokens == 40
    return tokens


@contextlib.asynccontextmanager
async def sim_on(address: str):
    """The sim model loaded on the `triton` fixture's server: (worker, a pool without muxes, one with)."""
    client = triton_aio.InferenceServerClient(address)
    await load_sim(client)
    own, muxed = TritonPool(mux=False), TritonPool(mux=True)
    try:
        yield worker_pb2.WorkerRecord(id="w-mux", triton_grpc_address=address, triton_model=SIM_MODEL), own, muxed
    finally:
        for pool in (own, muxed):
            await pool.close()
        await client.close()


async def both_ways(address: str) -> tuple[list, list, float, float]:
    async with sim_on(address) as (worker, own, muxed):
        alone = await asyncio.gather(*(generate(own, worker, n) for n in range(8)))
        batches, deltas = metrics.MUX_BATCHES._value.get(), metrics.MUX_DELTAS._value.get()
        together = await asyncio.gather(*(generate(muxed, worker, n) for n in range(8)))
        return alone, together, metrics.MUX_BATCHES._value.get() - batches, metrics.MUX_DELTAS._value.get() - deltas


def test_concurrent_requests_get_their_own_tokens_in_shared_responses(triton):
    _, address = triton
    alone, together, batches, deltas = asyncio.run(both_ways(address))
    assert together == alone and all(len(t) == SAMPLING["max_tokens"] for t in together)
    assert deltas >= 8, "the requests' deltas came by the mux (all but the first, which started alone)"
    assert batches < deltas / 2, f"{batches} responses for {deltas} deltas: the engine steps were not batched"


async def own_stream_with_unknown_mux(address: str) -> list:
    client = triton_aio.InferenceServerClient(address)
    await load_sim(client)
    ids = triton_aio.InferInput("input_ids", [40], "INT32")
    ids.set_data_from_numpy(np.asarray(prompt(1), dtype=np.int32))

    async def requests():
        yield {"model_name": SIM_MODEL, "inputs": [ids], "request_id": "lost", "parameters": {engine_mux.MUX: "nope"}}

    outputs = []
    try:
        async for result, error in client.stream_infer(requests()):
            assert error is None
            outputs.append({o.name for o in result.get_response().outputs})
            if "finish_reason" in outputs[-1]:
                break
    finally:
        await client.close()
    return outputs


def test_a_request_naming_no_open_mux_streams_on_its_own(triton):
    _, address = triton
    outputs = asyncio.run(own_stream_with_unknown_mux(address))
    assert outputs and all("output_ids" in names and engine_mux.OUTPUT not in names for names in outputs)


async def idle_then_again(address: str) -> tuple[str, bool, str, list[int]]:
    async with sim_on(address) as (worker, _, pool):
        deltas = metrics.MUX_DELTAS._value.get()
        await generate(pool, worker, 3)
        assert metrics.MUX_DELTAS._value.get() == deltas, "a request alone on its worker streams on its own"
        first = await pool._mux(worker)
        await asyncio.sleep(engine_mux.IDLE_CLOSE_S + 2 * engine_mux.CHECK_S + 0.5)
        still_open = first.open
        tokens = await generate(pool, worker, 3)
        second = await pool._mux(worker)
        return first.id, still_open, second.id, tokens


def test_a_request_alone_needs_no_mux_and_an_idle_mux_ends_and_another_opens(triton):
    _, address = triton
    first, still_open, second, tokens = asyncio.run(idle_then_again(address))
    assert not still_open, "the model ends a mux idle for IDLE_CLOSE_S"
    assert second != first and len(tokens) == SAMPLING["max_tokens"]


async def some_leave_early(address: str) -> tuple[list, list]:
    async with sim_on(address) as (worker, own, muxed):

        async def leave_early(n: int) -> None:
            async for _ in muxed.stream(worker, f"leaver-{n}", prompt(n), SAMPLING, {}):
                return  # its client went away after the first chunk

        alone = await asyncio.gather(*(generate(own, worker, n) for n in range(6)))
        results = await asyncio.gather(*(generate(muxed, worker, n) for n in range(6)), leave_early(6), leave_early(7))
        return alone, results[:6]


def test_requests_leaving_a_mux_early_do_not_disturb_the_others_on_it(triton):
    _, address = triton
    alone, stayed = asyncio.run(some_leave_early(address))
    assert stayed == alone
