"""An engine request's spans: engine.request, then prefill (or the KV transfer) and decode, one each."""

import pytest

from engines.request import EngineRequest
from kvmesh.sampling import SamplingParams
from tests.support import spans
from tests.unit.engines.test_serving import FakeEngine, d, run


@pytest.fixture
def exporter(monkeypatch):
    return spans.recording(monkeypatch)


async def test_a_whole_request_is_prefill_then_decode_under_the_request(exporter):
    await run(FakeEngine([d([]), d([5]), d([6, 7]), d([8], "stop")]))
    assert spans.tree(exporter) == {
        ("engine.request", None), ("engine.prefill", "engine.request"), ("engine.decode", "engine.request"),
    }  # fmt: skip
    decode = next(s for s in exporter.get_finished_spans() if s.name == "engine.decode")
    assert decode.attributes["kvmesh.output_tokens"] == 4 and decode.attributes["kvmesh.finish_reason"] == "stop"


async def test_a_decode_instance_given_kv_pulls_it_instead_of_prefilling(exporter):
    transfer = {"remote_host": "127.0.0.1", "remote_port": 5600}
    request = EngineRequest("r", [1, 2], SamplingParams(), {}, transfer)
    await run(FakeEngine([d([5]), d([6], "length")]), request=request)
    names = {name for name, _ in spans.tree(exporter)}
    assert names == {"engine.request", "engine.kv_transfer", "engine.decode"}
    pull = next(s for s in exporter.get_finished_spans() if s.name == "engine.kv_transfer")
    assert pull.attributes["kvmesh.kv_source"] == "127.0.0.1:5600"


async def test_a_prefill_instance_has_no_decode_and_a_failure_marks_the_open_phase(exporter):
    await run(FakeEngine([d([5], "length")]))
    assert {name for name, _ in spans.tree(exporter)} == {"engine.request", "engine.prefill"}
    exporter.clear()
    await run(FakeEngine([d([5]), d([6])], fail_after=1))
    decode = next(s for s in exporter.get_finished_spans() if s.name == "engine.decode")
    assert not decode.status.is_ok


async def test_the_gateways_trace_continues_into_the_engine(exporter):
    parent = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    request = EngineRequest("r", [1, 2], SamplingParams(), {"traceparent": parent})
    await run(FakeEngine([d([5], "stop")]), request=request)
    span = next(s for s in exporter.get_finished_spans() if s.name == "engine.request")
    assert f"{span.context.trace_id:032x}" == "ab" * 16 and f"{span.parent.span_id:016x}" == "cd" * 8
