"""serve_request with a fake engine: the final message always goes out, cancellation aborts."""

import asyncio

from engines.request import EngineRequest
from engines.serving import serve_request
from kvmesh.engine_wire import EngineDelta
from kvmesh.sampling import SamplingParams


class FakeEngine:
    def __init__(self, deltas, delay=0.0, fail_after=None):
        self.deltas, self.delay, self.fail_after = deltas, delay, fail_after
        self.aborted: list[str] = []

    async def generate(self, request):
        for i, d in enumerate(self.deltas):
            if self.fail_after is not None and i == self.fail_after:
                raise RuntimeError("boom")
            await asyncio.sleep(self.delay)
            yield d

    async def abort(self, request_id):
        self.aborted.append(request_id)


REQ = EngineRequest("r1", [1, 2], SamplingParams())


def d(ids, finish=None):
    return EngineDelta(ids, finish, 2, 0)


async def never():
    return False


async def run(engine, cancelled=never, request=REQ):
    sent, errors = [], []

    async def send(delta, final):
        sent.append((delta, final))

    async def send_error(message):
        errors.append(message)

    outcome = await serve_request(engine, request, send, send_error, cancelled)
    return outcome, sent, errors


async def test_streams_and_ends_with_one_final():
    outcome, sent, errors = await run(FakeEngine([d([5]), d([]), d([6, 7]), d([8], "stop")]))
    assert outcome == "finished" and not errors
    assert [(x.token_ids, final) for x, final in sent] == [([5], False), ([6, 7], False), ([8], True)]


async def test_stream_that_ends_without_finish_still_sends_a_final():
    outcome, sent, _ = await run(FakeEngine([d([5])]))
    assert sent[-1][1] is True and sent[-1][0].finish_reason == "abort"


async def test_client_cancellation_aborts_in_the_engine():
    engine = FakeEngine([d([i]) for i in range(1000)], delay=0.01)
    flag = {"cancelled": False}
    asyncio.get_running_loop().call_later(0.1, lambda: flag.update(cancelled=True))

    async def cancelled():
        return flag["cancelled"]

    outcome, sent, _ = await run(engine, cancelled)
    assert outcome == "cancelled"
    assert engine.aborted == ["r1"]
    assert sent[-1] == (EngineDelta([], "abort", 2, 0), True)
    assert len(sent) < 100


async def test_a_request_done_within_the_poll_interval_never_asks_whether_it_was_cancelled():
    asked = []

    async def cancelled():
        asked.append(True)
        return False

    outcome, _, _ = await run(FakeEngine([d([1]), d([2], "stop")]), cancelled)
    assert outcome == "finished" and not asked


async def test_engine_failure_is_one_error_and_an_abort():
    engine = FakeEngine([d([1]), d([2])], fail_after=1)
    outcome, sent, errors = await run(engine)
    assert outcome == "error" and engine.aborted == ["r1"]
    assert len(errors) == 1 and "boom" in errors[0]


async def test_a_slow_send_lets_the_engine_merge_tokens():
    """While a request's previous response is still being handed to Triton, its next send waits."""
    in_flight, overlaps = 0, 0

    async def slow_send(delta, final):
        nonlocal in_flight, overlaps
        in_flight += 1
        overlaps += in_flight > 1
        await asyncio.sleep(0.01)
        in_flight -= 1

    async def no_error(message):
        raise AssertionError(message)

    engine = FakeEngine([d([i]) for i in range(5)] + [d([9], "stop")])
    assert await serve_request(engine, REQ, slow_send, no_error, never) == "finished"
    assert overlaps == 0


async def test_a_response_interval_sends_the_first_token_at_once_and_merges_the_rest_into_the_final():
    deltas = [d([5]), d([6]), d([]), d([7, 8]), d([9], "length")]
    request = EngineRequest("r1", [1, 2], SamplingParams(), response_interval_s=60)
    outcome, sent, _ = await run(FakeEngine(deltas), request=request)
    assert outcome == "finished"
    assert [(x.token_ids, final) for x, final in sent] == [([5], False), ([6, 7, 8, 9], True)]
    assert sent[-1][0].finish_reason == "length"


class PausingEngine(FakeEngine):
    """Yields its deltas at once, but sleeps `pause_s` before the one at `pause_before`."""

    def __init__(self, deltas, pause_before, pause_s):
        super().__init__(deltas)
        self.pause_before, self.pause_s = pause_before, pause_s

    async def generate(self, request):
        for i, delta in enumerate(self.deltas):
            if i == self.pause_before:
                await asyncio.sleep(self.pause_s)
            yield delta


async def test_a_response_interval_sends_what_it_holds_once_the_interval_passed():
    request = EngineRequest("r1", [1, 2], SamplingParams(), response_interval_s=0.1)
    engine = PausingEngine([d([5]), d([6]), d([7]), d([8], "stop")], pause_before=2, pause_s=0.15)
    _, sent, _ = await run(engine, request=request)
    assert [x.token_ids for x, _ in sent] == [[5], [6, 7], [8]]
