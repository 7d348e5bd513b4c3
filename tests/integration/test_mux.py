"""The mux (engines/mux.py) on a real Triton with the simulated engine's model, through the
gateway's own Triton client: the same tokens as one stream a request, in fewer responses; a
request naming no open mux fails with an error of its own; one alone on its worker streams on its
own; an idle mux ends and the next one opens; requests leaving a mux early do not disturb the
others on it; an engine's refusal of a muxed request comes back as its error (alone, or among
requests sent as one); requests submitted together on an open mux go as one Triton request; a mux
that carried its share of requests gives way to a new one."""

import asyncio
import contextlib

import numpy as np
import tritonclient.grpc.aio as triton_aio

from engines import mux as engine_mux
from kvmesh import engine_wire
from kvmesh.v1 import worker_pb2
from services.gateway import engine_mux as gateway_mux
from services.gateway import metrics
from services.gateway.engine_client import EngineError, TritonPool
from tests.integration.conftest import SIM_MODEL, load_sim
from tests.support.waiting import wait_until

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


async def together_on_an_open_mux(address: str) -> tuple[list, list]:
    async with sim_on(address) as (worker, own, muxed):
        alone = await asyncio.gather(*(generate(own, worker, n) for n in range(8)))
        await asyncio.gather(*(generate(muxed, worker, n) for n in range(2)))  # opens the mux
        return alone, await asyncio.gather(*(generate(muxed, worker, n) for n in range(8)))


def test_requests_submitted_together_on_a_mux_go_as_one_triton_request(triton, monkeypatch):
    sent_as_one = []
    batch_request = gateway_mux.EngineMux._batch_request

    def counted(mux, requests):
        sent_as_one.append(len(requests))
        return batch_request(mux, requests)

    monkeypatch.setattr(gateway_mux.EngineMux, "_batch_request", counted)
    _, address = triton
    alone, together = asyncio.run(together_on_an_open_mux(address))
    assert together == alone
    assert sent_as_one and max(sent_as_one) > 1, sent_as_one


async def unknown_mux(address: str) -> list:
    client = triton_aio.InferenceServerClient(address)
    await load_sim(client)
    ids = triton_aio.InferInput("input_ids", [40], "INT32")
    ids.set_data_from_numpy(np.asarray(prompt(1), dtype=np.int32))

    async def requests():
        yield {"model_name": SIM_MODEL, "inputs": [ids], "request_id": "lost", "parameters": {engine_wire.MUX: "nope"}}

    answers = []
    try:
        async for result, error in client.stream_infer(requests()):
            answers.append(error.message() if error is not None else result.get_response())
            break
    finally:
        await client.close()
    return answers


def test_a_request_naming_no_open_mux_fails_with_an_error_of_its_own(triton):
    _, address = triton
    assert asyncio.run(unknown_mux(address)) == ["mux nope is not open"]


async def idle_then_again(address: str) -> tuple[str, bool, str, list[int]]:
    async with sim_on(address) as (worker, _, pool):
        deltas = metrics.MUX_DELTAS._value.get()
        await generate(pool, worker, 3)
        assert metrics.MUX_DELTAS._value.get() == deltas, "a request alone on its worker streams on its own"
        first = await pool._mux(worker)
        await asyncio.sleep(engine_wire.MUX_IDLE_CLOSE_S + 2 * engine_mux.CHECK_S + 0.5)
        still_open = first.open
        tokens = await generate(pool, worker, 3)
        second = await pool._mux(worker)
        return first.id, still_open, second.id, tokens


def test_a_request_alone_needs_no_mux_and_an_idle_mux_ends_and_another_opens(triton):
    _, address = triton
    first, still_open, second, tokens = asyncio.run(idle_then_again(address))
    assert not still_open, "the model ends a mux idle for MUX_IDLE_CLOSE_S"
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


async def refused_on_the_mux(address: str):
    async with sim_on(address) as (worker, _, muxed):
        await asyncio.gather(*(generate(muxed, worker, n) for n in range(2)))  # opens the mux

        async def refused() -> str:
            try:
                async for _ in muxed.stream(worker, "refused", prompt(9), {"max_tokens": -5}, {}):
                    pass
            except EngineError as e:
                return str(e)
            return "not refused"

        deltas = metrics.MUX_DELTAS._value.get()
        refusal = await refused()  # alone, on the mux that is open
        by_mux = metrics.MUX_DELTAS._value.get() - deltas
        return refusal, by_mux, await asyncio.gather(refused(), *(generate(muxed, worker, n) for n in range(4)))


def test_an_engine_refusal_on_a_mux_is_that_requests_error_and_the_others_go_on(triton):
    _, address = triton
    refusal, by_mux, (again, *others) = asyncio.run(refused_on_the_mux(address))
    assert "w-mux" in refusal and "sampling_params: max_tokens" in refusal, refusal
    assert by_mux == 1, "the refusal came in a batch of the open mux"
    assert again == refusal and all(len(tokens) == SAMPLING["max_tokens"] for tokens in others)


async def past_rotation(address: str) -> tuple[list, list, bool, bool]:
    async with sim_on(address) as (worker, own, muxed):
        alone = await asyncio.gather(*(generate(own, worker, n) for n in range(8)))
        first_round = await asyncio.gather(*(generate(muxed, worker, n) for n in range(4)))
        first = muxed._muxes[(address, SIM_MODEL)]
        second_round = await asyncio.gather(*(generate(muxed, worker, n) for n in range(4, 8)))
        second = muxed._muxes[(address, SIM_MODEL)]
        with contextlib.suppress(TimeoutError):  # the assertion names what did not happen
            await wait_until(first.finished, engine_wire.MUX_IDLE_CLOSE_S + 2 * engine_mux.CHECK_S + 5, 0.05)
        return alone, first_round + second_round, second is not first, first.finished()


def test_a_mux_that_carried_its_share_of_requests_gives_way_to_a_new_one_and_ends(triton, monkeypatch):
    """Triton holds some state per request sent on a stream until the stream ends (the soak's
    tritonserver grew ~1.2 MB per 1,000 requests on one mux): a mux takes ROTATE_AFTER_REQUESTS."""
    monkeypatch.setattr(gateway_mux, "ROTATE_AFTER_REQUESTS", 3)
    _, address = triton
    alone, muxed, rotated, first_ended = asyncio.run(past_rotation(address))
    assert muxed == alone
    assert rotated, "the fifth request opened a new mux: the first had carried 3"
    assert first_ended, "the model ended the retired mux once it idled, and its stream with it"
