"""The gateway's per-request inbox: deltas in the order they came, then the first error that
ended the request, raised to its reader; the pool failing the requests of a worker gone or
unresponsive, of a worker silent for the stall timeout, and of a request at its deadline (which
cancels its stream); a mux sending the requests submitted together as one Triton request; and a mux
whose stream carries an error failing its requests and cancelling that stream, over fake Tritons."""

import asyncio
import contextlib
import time

import grpc
import msgspec
import numpy as np
import pytest
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import service_pb2
from tritonclient.utils import deserialize_bytes_tensor

from kvmesh import engine_wire as wire
from kvmesh.engine_wire import EngineDelta
from kvmesh.errors import DeadlineExceeded, Unavailable
from kvmesh.registry import LiveWorker
from kvmesh.sampling import SamplingParams
from kvmesh.v1 import worker_pb2
from services.gateway.engine_client import EngineError, Inbox, TritonPool
from services.gateway.engine_mux import EngineMux, encoded_request
from tests.support.waiting import wait_until

WORKER = worker_pb2.WorkerRecord(id="w", triton_model="sim")


async def test_deltas_come_in_order_then_the_first_error():
    inbox = Inbox(WORKER)
    inbox.put(EngineDelta([1], None, 3, 0))
    inbox.put(EngineDelta([2], None, 3, 0))
    inbox.fail(Unavailable("mux gone"))
    inbox.engine_failed("too late")  # after the first error: never read
    assert [(await inbox.get()).token_ids for _ in range(2)] == [[1], [2]]
    with pytest.raises(Unavailable, match="mux gone"):
        await inbox.get()


@pytest.mark.parametrize(
    "message, error",
    [
        ("in 0: prompt too long", EngineError),
        ("Request for unknown model: 'sim' has no available versions", Unavailable),
    ],
)
async def test_an_engine_message_becomes_the_workers_error(message, error):
    inbox = Inbox(WORKER)
    inbox.engine_failed(message)
    with pytest.raises(error, match="worker w"):
        await inbox.get()


def live(*records: worker_pb2.WorkerRecord) -> dict[str, LiveWorker]:
    """The registry watcher's view: these workers."""
    return {r.id: LiveWorker(r, lease_expires_ms=0) for r in records}


@pytest.mark.parametrize(
    "registry, error",
    [
        (lambda w1: live(worker_pb2.WorkerRecord(id="w2")), "w1 left the registry"),
        (lambda w1: live(worker_pb2.WorkerRecord(id="w1", unresponsive=True)), "w1 is unresponsive"),
    ],
)
async def test_requests_on_a_worker_gone_or_unresponsive_fail_so_they_can_move(registry, error):
    """A Triton that takes the stream and never answers (a host cut off, a hung server): the
    request fails as soon as the registry no longer lists its worker, or lists it unresponsive,
    not when TCP gives up."""
    async with fake_triton() as (triton, address):
        pool = TritonPool(mux=False)
        worker = worker_pb2.WorkerRecord(id="w1", triton_model="sim", triton_grpc_address=address)
        stream = pool.stream(worker, "r1", [1, 2, 3], SamplingParams(max_tokens=4), {})
        reading = asyncio.ensure_future(anext(stream))
        await asyncio.wait_for(triton.arrived.wait(), 5)
        pool.fail_workers_gone(live(worker, worker_pb2.WorkerRecord(id="w2")))  # w1 is still there, responsive
        await asyncio.sleep(0.1)  # what a failure would take to reach the reader: it does not come
        assert not reading.done()
        pool.fail_workers_gone(registry(worker))
        with pytest.raises(Unavailable, match=error):
            await asyncio.wait_for(reading, 5)
        await stream.aclose()
        await pool.close()


async def test_a_request_fails_once_its_worker_sent_none_of_our_requests_anything_for_the_stall_timeout():
    """A worker streaming another request's tokens is not stalled, however long one request waits
    there (queued in its engine); once it sends nothing at all, the waiting request fails."""
    async with fake_triton(talkers={"talker"}) as (triton, address):
        pool = TritonPool(mux=False, stall_timeout_s=0.4)
        worker = worker_pb2.WorkerRecord(id="w1", triton_model="sim", triton_grpc_address=address)
        talker = pool.stream(worker, "talker", [1], SamplingParams(max_tokens=1000), {})
        waiting = pool.stream(worker, "waiting", [1], SamplingParams(max_tokens=4), {})
        reading = asyncio.ensure_future(anext(waiting))
        started = time.monotonic()
        while time.monotonic() - started < 1.0:  # 2.5 stall timeouts: the worker talks all along
            assert (await anext(talker)).token_ids == [7]
        assert not reading.done()
        await talker.aclose()
        quiet = time.monotonic()
        with pytest.raises(Unavailable, match="w1: nothing from its engine in 0.4s"):
            await asyncio.wait_for(reading, 5)
        assert 0.3 < time.monotonic() - quiet < 1.0
        await waiting.aclose()
        await pool.close()


async def test_a_request_at_its_deadline_fails_and_its_stream_is_cancelled():
    async with fake_triton() as (triton, address):
        pool = TritonPool(mux=False)
        worker = worker_pb2.WorkerRecord(id="w1", triton_model="sim", triton_grpc_address=address)
        stream = pool.stream(worker, "r1", [1], SamplingParams(max_tokens=4), {}, deadline=time.monotonic() + 0.3)
        with pytest.raises(DeadlineExceeded, match="w1: the deadline passed"):
            await asyncio.wait_for(anext(stream), 5)
        await stream.aclose()
        await asyncio.wait_for(triton.cancelled.wait(), 5)  # Triton aborts a cancelled request
        await pool.close()


async def test_requests_submitted_while_one_is_sent_go_as_one_triton_request_and_one_alone_as_its_own():
    async with fake_triton() as (triton, address):
        client = triton_aio.InferenceServerClient(address)
        mux = EngineMux(client, "sim", address)
        await mux.start(5.0)

        def submit(request_id: str) -> None:
            request = encoded_request(request_id, [1, 2, 3], SamplingParams(max_tokens=4), None, {"traceparent": "t"})
            mux.submit(request, Inbox(WORKER))

        submit("a")
        await wait_until(lambda: len(triton.requests) == 2)
        for request_id in "bcd":
            submit(request_id)
        mux.leave("c")  # its client went away before it was sent
        await wait_until(lambda: len(triton.requests) == 3)
        _, alone, together = triton.requests
        assert alone.id == "a" and [t.name for t in alone.inputs] == [wire.INPUT_IDS, wire.SAMPLING_PARAMS]
        assert alone.parameters[wire.MUX].string_param == mux.id and alone.parameters["traceparent"].string_param == "t"
        assert [t.name for t in together.inputs] == [wire.INPUT_IDS, wire.MUX_REQUESTS]
        assert together.parameters[wire.MUX].string_param == mux.id
        members = wire.decode_requests(deserialize_bytes_tensor(together.raw_input_contents[1])[0])
        assert [m.request_id for m in members] == ["b", "d"]
        assert np.frombuffer(members[0].input_ids, dtype="<i4").tolist() == [1, 2, 3]
        assert msgspec.json.decode(members[0].sampling_params, type=SamplingParams) == SamplingParams(max_tokens=4)
        assert members[0].parameters == {"traceparent": "t"} and members[0].kv_transfer_params is None
        await mux.close()
        await client.close()


async def test_a_mux_whose_stream_carries_an_error_fails_its_requests_and_cancels_its_stream():
    """The model, still serving them, then aborts them and ends the mux at once (an unloading
    model is not held until they finish and the mux idles out)."""
    async with fake_triton(refused={"b"}) as (triton, address):
        client = triton_aio.InferenceServerClient(address)
        mux = EngineMux(client, "sim", address)
        await mux.start(5.0)
        inboxes = [Inbox(WORKER), Inbox(WORKER)]
        mux.submit(encoded_request("a", [1], SamplingParams(max_tokens=4), None, {}), inboxes[0])
        await wait_until(lambda: len(triton.requests) == 2)  # alone: b comes as a request of its own
        mux.submit(encoded_request("b", [1], SamplingParams(max_tokens=4), None, {}), inboxes[1])
        await asyncio.wait_for(triton.cancelled.wait(), 5)
        for inbox in inboxes:
            with pytest.raises(Unavailable, match="unknown model"):
                await asyncio.wait_for(inbox.get(), 5)
        assert not mux.open and mux.finished()
        await mux.close()
        await client.close()


class _FakeTriton(grpc.GenericRpcHandler):
    """Takes each stream's request: opens a mux when asked, records the requests sent on one and
    answers none of them but those named in `refused` (an error, as Triton refuses a request for
    a model it is unloading); answers those named in `talkers` with token 7 every 50 ms and never
    a final response, the others never."""

    def __init__(self, talkers: set[str], refused: set[str]) -> None:
        self.talkers = talkers
        self.refused = refused
        self.arrived = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.requests: list[service_pb2.ModelInferRequest] = []

    def service(self, details):
        async def stream(requests, context):
            try:
                async for raw in requests:
                    self.arrived.set()
                    request = service_pb2.ModelInferRequest.FromString(raw)
                    self.requests.append(request)
                    if wire.MUX_OPEN in request.parameters:
                        yield _mux_opened()
                        continue
                    if wire.MUX in request.parameters:
                        if request.id in self.refused:
                            yield _refused(request.id)
                        continue
                    while request.id in self.talkers:
                        yield _token_response(7)
                        await asyncio.sleep(0.05)
                    await asyncio.Event().wait()
                # As Triton: a stream whose client is done writing stays open while the requests it took run.
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise

        return grpc.stream_stream_rpc_method_handler(stream)


def _token_response(token: int) -> bytes:
    response = service_pb2.ModelInferResponse(outputs=[service_pb2.ModelInferResponse.InferOutputTensor(
        name=wire.OUTPUT_IDS, datatype="INT32", shape=[1])])  # fmt: skip
    response.raw_output_contents.append(np.asarray([token], dtype="<i4").tobytes())
    return service_pb2.ModelStreamInferResponse(infer_response=response).SerializeToString()


def _refused(request_id: str) -> bytes:
    message = "Request for unknown model: 'sim' has no available versions"
    response = service_pb2.ModelInferResponse(id=request_id)
    return service_pb2.ModelStreamInferResponse(error_message=message, infer_response=response).SerializeToString()


def _mux_opened() -> bytes:
    response = service_pb2.ModelInferResponse(outputs=[service_pb2.ModelInferResponse.InferOutputTensor(
        name=wire.MUX_DELTAS, datatype="BYTES", shape=[1])])  # fmt: skip
    response.raw_output_contents.append(len(b"[]").to_bytes(4, "little") + b"[]")  # a BYTES tensor of one element
    return service_pb2.ModelStreamInferResponse(infer_response=response).SerializeToString()


@contextlib.asynccontextmanager
async def fake_triton(talkers: set[str] = frozenset(), refused: set[str] = frozenset()):
    """(the fake, its address)."""
    server, triton = grpc.aio.server(), _FakeTriton(set(talkers), set(refused))
    server.add_generic_rpc_handlers([triton])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield triton, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)
