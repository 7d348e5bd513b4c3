"""The gateway's request life with fake router and engines: disaggregated requests stream the
prefill's first token once, fall back to local prefill when prefill fails, and a request whose
worker dies moves to another one with the prompt plus what was sent (no token lost or repeated)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import pytest
from transformers import AutoTokenizer

from kvmesh import models
from kvmesh.engine_wire import EngineDelta
from kvmesh.errors import DeadlineExceeded, Unavailable
from kvmesh.sampling import SamplingParams
from kvmesh.v1 import router_pb2, worker_pb2
from services.gateway.engine_client import EngineError, stream_error
from services.gateway.generation import Generator
from services.gateway.served import ServedModel
from services.gateway.tokenization import ModelTokenizer

PREFILL = worker_pb2.WorkerRecord(id="p", role=worker_pb2.ROLE_PREFILL, kv_block_size=16)
DECODE = worker_pb2.WorkerRecord(id="d", role=worker_pb2.ROLE_DECODE, kv_block_size=16)
OTHER = worker_pb2.WorkerRecord(id="d2", role=worker_pb2.ROLE_DECODE, kv_block_size=16)
AGG = worker_pb2.WorkerRecord(id="a", role=worker_pb2.ROLE_AGGREGATED, kv_block_size=16)
TRANSFER = {"remote_engine_id": "e", "remote_block_ids": [1]}
PROMPT = [1000, 1001, 1002]


@pytest.fixture(scope="module")
def model():
    path = str(models.resolve(models.DEFAULT_MODEL))
    return ServedModel("m", ModelTokenizer("m", AutoTokenizer.from_pretrained(path)), {})


@dataclass
class FakeRouter:
    decisions: list[router_pb2.RouteResponse]
    routed: list[dict] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    cached: dict[str, int | None] = field(default_factory=dict)  # request id → the cached tokens it was released with

    async def route(self, model, request_id, num_tokens, hashes, block_size, trace, exclude=(), aggregated_only=False):
        self.routed.append({"id": request_id, "tokens": num_tokens, "exclude": list(exclude)})
        return self.decisions.pop(0)

    def mark_prefilled(self, request_id):
        pass

    def release(self, request_id, cached_tokens=None):
        self.released.append(request_id)
        self.cached[request_id] = cached_tokens


@dataclass
class FakeEngines:
    """worker id → the chunks its engine streams (an exception in the list is raised there)."""

    scripts: dict[str, list]
    calls: list[dict] = field(default_factory=list)

    async def stream(
        self, worker, request_id, ids, sampling, trace, kv_transfer_params=None, response_interval_ms=0, deadline=None
    ):
        self.calls.append({"worker": worker.id, "ids": ids, "sampling": sampling, "transfer": kv_transfer_params,
                           "interval_ms": response_interval_ms, "deadline": deadline})  # fmt: skip
        for item in self.scripts[worker.id]:
            if isinstance(item, Exception):
                raise item
            yield item


class FakeServed:
    def block_size(self, name):
        return 16


def chunk(ids, finish=None, transfer=None, cached=0):
    return EngineDelta(list(ids), finish, len(PROMPT), cached, transfer)


async def run(model, router, engines, max_tokens=4, whole=False, timeout_s=None, request_timeout_s=600.0):
    generator = Generator(router, None, FakeServed(), whole_answer_interval_ms=200, request_timeout_s=request_timeout_s)
    generator.phases.engines = engines
    sampling = SamplingParams(max_tokens=max_tokens)
    out = [c async for c in generator.generate(model, PROMPT, sampling, "r", whole=whole, timeout_s=timeout_s)]
    return [t for c in out for t in c.token_ids], out[-1]


def disaggregated():
    return router_pb2.RouteResponse(worker=DECODE, prefill_worker=PREFILL)


async def test_disaggregated_sends_the_first_token_once(model):
    engines = FakeEngines({
        "p": [chunk([7], "length", TRANSFER, cached=2)],
        "d": [chunk([7, 8]), chunk([9, 10], "length")],
    })  # fmt: skip
    tokens, last = await run(model, FakeRouter([disaggregated()]), engines)
    assert tokens == [7, 8, 9, 10]
    assert last.finish_reason == "length" and last.usage.cached_tokens == 2 and last.usage.completion_tokens == 4
    assert engines.calls[1]["transfer"] == TRANSFER
    assert engines.calls[0]["sampling"].seed == engines.calls[1]["sampling"].seed is not None  # both phases alike


async def test_a_first_token_that_ends_the_request_skips_decode(model):
    engines = FakeEngines({"p": [chunk([2], "stop", TRANSFER)], "d": []})
    tokens, last = await run(model, FakeRouter([disaggregated()]), engines)
    assert tokens == [2] and last.finish_reason == "stop" and len(engines.calls) == 1


async def test_failed_prefill_falls_back_to_local_prefill_on_the_decode_worker(model):
    engines = FakeEngines({"p": [EngineError("boom")], "d": [chunk([5, 6]), chunk([7, 8], "length")]})
    tokens, _ = await run(model, FakeRouter([disaggregated()]), engines)
    assert tokens == [5, 6, 7, 8]
    assert engines.calls[1]["transfer"] == {}  # prefill there


@pytest.mark.parametrize("whole, interval_ms", [(False, 0), (True, 200)])
async def test_only_a_caller_that_wants_the_whole_answer_lets_the_engines_merge_tokens(model, whole, interval_ms):
    engines = FakeEngines({"p": [chunk([7], "length", TRANSFER)], "d": [chunk([7, 8, 9, 10], "length")]})
    tokens, _ = await run(model, FakeRouter([disaggregated()]), engines, whole=whole)
    assert tokens == [7, 8, 9, 10]
    assert [c["interval_ms"] for c in engines.calls] == [0, interval_ms]  # a prefill answers once anyway


async def test_a_whole_request_on_a_decode_worker_asks_it_to_prefill(model):
    engines = FakeEngines({"d": [chunk([5], "length")]})
    await run(model, FakeRouter([router_pb2.RouteResponse(worker=DECODE)]), engines)
    assert engines.calls[0]["transfer"] == {}


async def test_a_dying_worker_hands_the_request_on_without_losing_or_repeating_tokens(model):
    died = Unavailable("worker d at 127.0.0.1:1: Socket closed")
    engines = FakeEngines({
        "p": [chunk([7], "length", TRANSFER)],
        "d": [chunk([7, 8]), died],
        "d2": [chunk([9, 10], "length")],
    })  # fmt: skip
    router = FakeRouter([disaggregated(), router_pb2.RouteResponse(worker=OTHER)])
    tokens, last = await run(model, router, engines)
    assert tokens == [7, 8, 9, 10] and last.usage.completion_tokens == 4
    # The retry carries the prompt plus the two tokens sent, for the two still owed, never on d.
    assert engines.calls[-1]["ids"] == PROMPT + [7, 8] and engines.calls[-1]["sampling"].max_tokens == 2
    assert router.routed[1]["exclude"] == ["d"]
    assert router.released == ["r", "r-m1"]


async def test_a_decode_worker_that_changed_role_during_the_prefill_hands_the_request_on(model):
    # Routed while it was a decode worker; by the time the prefill is done it runs sim_prefill.
    gone = stream_error(DECODE, "Request for unknown model: 'sim_decode' has no available versions")
    assert isinstance(gone, Unavailable) and "no longer runs" in str(gone)
    engines = FakeEngines({"p": [chunk([7], "length", TRANSFER)], "d": [gone], "d2": [chunk([8, 9, 10], "length")]})
    router = FakeRouter([disaggregated(), router_pb2.RouteResponse(worker=OTHER)])
    tokens, _ = await run(model, router, engines)
    assert tokens == [7, 8, 9, 10]
    assert engines.calls[-1]["ids"] == PROMPT + [7] and router.routed[1]["exclude"] == ["d"]


@pytest.mark.parametrize(
    "scripts, decisions, cached",
    [
        ({"a": [chunk([1]), chunk([2], "length", cached=32)]}, [router_pb2.RouteResponse(worker=AGG)], {"r": 32}),
        # Disaggregated: the prefill worker computed the prompt, and its figure is the one reported.
        ({"p": [chunk([7], "length", TRANSFER, cached=16)], "d": [chunk([7, 8], "length", cached=48)]},
         [disaggregated()], {"r": 16}),
        # The prefill failed and the decode worker prefilled: its figure is not what was predicted.
        ({"p": [EngineError("boom")], "d": [chunk([7, 8], "length", cached=48)]}, [disaggregated()], {"r": None}),
        # Moved, or aborted and moved: neither attempt reports what the engine cached.
        ({"a": [chunk([1]), Unavailable("gone")], "d2": [chunk([2], "length", cached=32)]},
         [router_pb2.RouteResponse(worker=AGG), router_pb2.RouteResponse(worker=OTHER)], {"r": None, "r-m1": None}),
        ({"a": [chunk([], "abort", cached=32)], "d2": [chunk([1], "length", cached=32)]},
         [router_pb2.RouteResponse(worker=AGG), router_pb2.RouteResponse(worker=OTHER)], {"r": None, "r-m1": None}),
    ],
)  # fmt: skip
async def test_the_release_carries_the_engines_cached_tokens_only_for_a_request_that_ran_to_its_end(
    model, scripts, decisions, cached
):
    router = FakeRouter(decisions)
    await run(model, router, FakeEngines(scripts), max_tokens=2)
    assert router.cached == cached


async def test_a_client_gone_releases_without_cached_tokens(model):
    router = FakeRouter([router_pb2.RouteResponse(worker=AGG)])
    generator = Generator(router, None, FakeServed())
    generator.phases.engines = FakeEngines({"a": [chunk([1], cached=32), chunk([2], "length", cached=32)]})
    chunks = generator.generate(model, PROMPT, SamplingParams(max_tokens=2), "r")
    await anext(chunks)
    await chunks.aclose()
    assert router.cached == {"r": None}


def test_other_engine_errors_stay_engine_errors():
    error = stream_error(DECODE, "in 0: prompt too long")
    assert type(error) is EngineError and str(error) == "worker d: in 0: prompt too long"


async def test_a_second_failure_reaches_the_client(model):
    died = Unavailable("gone")
    engines = FakeEngines({"a": [chunk([1]), died], "d2": [died]})
    router = FakeRouter([router_pb2.RouteResponse(worker=AGG), router_pb2.RouteResponse(worker=OTHER)])
    with pytest.raises(Unavailable, match="gone"):
        await run(model, router, engines)


async def test_engine_errors_are_not_retried(model):
    engines = FakeEngines({"a": [EngineError("prompt too long")]})
    with pytest.raises(EngineError):
        await run(model, FakeRouter([router_pb2.RouteResponse(worker=AGG)]), engines)


async def test_no_worker_to_route_to_is_not_retried(model):
    class NoWorker(FakeRouter):
        async def route(self, *args, **kwargs):
            self.routed.append(args)
            raise Unavailable("no live worker in the registry")

    router = NoWorker([])
    with pytest.raises(Unavailable, match="no live worker"):
        await run(model, router, FakeEngines({}))
    assert len(router.routed) == 1


class SilentRouter(FakeRouter):
    """A router that never answers."""

    async def route(self, *args, **kwargs):
        self.routed.append(args)
        await asyncio.Event().wait()


@pytest.mark.parametrize(
    "timeout_s, request_timeout_s, whose",
    [(0.1, 600.0, "the client's deadline"), (None, 0.1, "the gateway's --request-timeout-s")],
)
async def test_a_request_that_waits_for_a_worker_past_its_deadline_fails_with_deadline_exceeded(
    model, timeout_s, request_timeout_s, whose
):
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match=f"within {whose} \\(0.1s\\): 0 of 4 tokens sent"):
        await run(model, SilentRouter([]), FakeEngines({}), timeout_s=timeout_s, request_timeout_s=request_timeout_s)
    assert time.monotonic() - started < 1.0


async def test_the_engines_get_the_deadline_and_one_that_passes_there_is_not_moved(model):
    """The deadline passing on a worker is not the worker's failure: no second worker is tried."""
    engines = FakeEngines({"a": [chunk([1]), DeadlineExceeded("worker a: the deadline passed")], "d2": []})
    router = FakeRouter([router_pb2.RouteResponse(worker=AGG), router_pb2.RouteResponse(worker=OTHER)])
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="1 of 4 tokens sent; it was cancelled"):
        await run(model, router, engines, timeout_s=30.0)
    assert len(router.routed) == 1 and router.released == ["r"]
    assert 29.0 < engines.calls[0]["deadline"] - started < 30.5
