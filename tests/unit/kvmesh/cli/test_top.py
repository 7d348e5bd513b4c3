"""`kvmesh top`: a frame from two readings, its rendering, one reading against fake services, and
the error when the router does not answer."""

from __future__ import annotations

import http.server
import io
import threading
from concurrent import futures
from dataclasses import replace

import grpc
import pytest
from rich.console import Console
from typer.testing import CliRunner

from kvmesh.cli.app import app
from kvmesh.cli.top_data import MeshReader, Reading, Worker, frame
from kvmesh.cli.top_view import render
from kvmesh.metrics_text import Scrape
from kvmesh.net import free_port
from kvmesh.v1 import router_pb2, router_pb2_grpc, worker_pb2


def gateway_text(requests_ok: int, ttft_fast: int, ttft_slow: int, prompt: int, cached: int) -> str:
    """The gateway's metrics as prometheus_client writes them (the families `kvmesh top` reads)."""
    return f"""\
# TYPE kvmesh_gateway_requests counter
kvmesh_gateway_requests_total{{front="http",status="200"}} {requests_ok}
kvmesh_gateway_requests_total{{front="http",status="429"}} 1
# TYPE kvmesh_gateway_in_flight gauge
kvmesh_gateway_in_flight 3
# TYPE kvmesh_gateway_prompt_tokens counter
kvmesh_gateway_prompt_tokens_total {prompt}
# TYPE kvmesh_gateway_completion_tokens counter
kvmesh_gateway_completion_tokens_total {requests_ok * 10}
# TYPE kvmesh_gateway_cached_tokens counter
kvmesh_gateway_cached_tokens_total {cached}
# TYPE kvmesh_gateway_ttft_seconds histogram
kvmesh_gateway_ttft_seconds_bucket{{le="0.1"}} {ttft_fast}
kvmesh_gateway_ttft_seconds_bucket{{le="0.5"}} {ttft_fast + ttft_slow}
kvmesh_gateway_ttft_seconds_bucket{{le="+Inf"}} {ttft_fast + ttft_slow}
kvmesh_gateway_ttft_seconds_sum 1.0
kvmesh_gateway_ttft_seconds_count {ttft_fast + ttft_slow}
"""


def engine_text(hits: int, prompt: int) -> str:
    """A worker's Triton metrics: the engine's families, as Triton writes its custom counters."""
    return f"""\
# TYPE nv_inference_count counter
nv_inference_count{{model="sim",version="1"}} 7
# TYPE kvmesh_engine_kv_usage_ratio gauge
kvmesh_engine_kv_usage_ratio{{model="sim"}} 0.42
# TYPE kvmesh_engine_running_sequences gauge
kvmesh_engine_running_sequences{{model="sim"}} 2
# TYPE kvmesh_engine_waiting_sequences gauge
kvmesh_engine_waiting_sequences{{model="sim"}} 1
# TYPE kvmesh_engine_prefix_cache_hit_tokens counter
kvmesh_engine_prefix_cache_hit_tokens{{model="sim"}} {hits}
# TYPE kvmesh_engine_prompt_tokens counter
kvmesh_engine_prompt_tokens{{model="sim"}} {prompt}
"""


def worker(worker_id: str, **fields) -> Worker:
    defaults = dict(model="m", role="aggregated", in_flight=1, capacity=8, lease_s=4.5, state="", metrics_address="")
    return Worker(id=worker_id, **(defaults | fields))


def readings() -> tuple[Reading, Reading]:
    """Two seconds apart: w-a's engine answers both times, w-b has no engine metrics (and no index entry)."""
    workers = (worker("w-a"), worker("w-b", role="decode", state="draining"))
    before = Reading(10.0, workers, {"w-a": 5}, Scrape.parse(gateway_text(10, 4, 0, 1000, 100)),
                     {"w-a": Scrape.parse(engine_text(hits=0, prompt=0))})  # fmt: skip
    now = Reading(12.0, workers, {"w-a": 7}, Scrape.parse(gateway_text(30, 14, 10, 3000, 1100)),
                  {"w-a": Scrape.parse(engine_text(hits=300, prompt=400))})  # fmt: skip
    return before, now


def test_a_frame_has_the_rates_over_the_interval():
    before, now = readings()
    rates = frame(now, before).rates
    assert rates is not None and rates.interval_s == 2.0
    assert rates.requests_per_s == {"200": 10.0}  # the 429s did not change
    assert (rates.prompt_tokens_per_s, rates.completion_tokens_per_s) == (1000.0, 100.0)
    assert rates.cache_hit_ratio == 0.5
    assert rates.in_flight == 3
    assert rates.ttft_s is not None
    p50, p99 = rates.ttft_s
    assert p50 == pytest.approx(0.1) and p99 == pytest.approx(0.1 + 0.4 * 9.8 / 10)  # 10 in (0.1, 0.5], 10 below
    assert rates.itl_s is None  # not exposed


def test_a_frame_shows_each_workers_engine_and_index_figures_or_none():
    before, now = readings()
    a, b = frame(now, before).workers
    assert (a.running, a.waiting, a.kv_usage, a.index_blocks, a.hit_ratio) == (2, 1, 0.42, 7, 0.75)
    assert (b.running, b.waiting, b.kv_usage, b.hit_ratio) == (None, None, None, None)
    assert b.index_blocks == 0  # kvindex answered and knows no block of it


def test_the_first_frame_has_workers_but_no_rates():
    before, _ = readings()
    first = frame(before, None)
    assert first.rates is None and len(first.workers) == 2 and first.workers[0].hit_ratio is None


def shown(renderable) -> str:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(renderable)
    return console.file.getvalue()


def test_the_rendering_shows_every_figure_and_dashes_for_the_unknown():
    before, now = readings()
    text = shown(render(frame(now, before)))
    assert "workers of m" in text and "w-a" in text and "w-b" in text and "decode (draining)" in text
    assert "1/8" in text and "2/1" in text and "42%" in text and "75%" in text and "4.5s" in text
    assert "–/–" in text  # w-b's running / waiting
    assert "10.0 (200 10.0)" in text and "in 1000.0, out 100.0" in text and "100 ms / 492 ms" in text
    assert "prefix-cache hits  50%" in text and "last 2.0s" in text


def test_workers_of_several_models_get_a_model_column_and_small_ratios_a_decimal():
    before, now = readings()
    a, b = now.workers
    several = replace(now, workers=(a, replace(b, model="other")), engines={})
    text = shown(render(frame(several, before)))
    assert "model" in text and "other" in text and "workers of" not in text
    nearly_empty = Scrape.parse(engine_text(0, 0).replace("0.42", "0.005"))
    assert "0.5%" in shown(render(frame(replace(now, engines={"w-a": nearly_empty}), before)))


def test_the_rendering_says_what_it_could_not_read():
    before, _ = readings()
    unreachable = Reading(0.0, before.workers, None, None, {}, ("kvindex at x:1: refused",))
    text = shown(render(frame(unreachable, None)))
    assert "kvindex at x:1: refused" in text and "after a second reading" in text
    assert "no live workers" in shown(render(frame(Reading(0.0, (), {}, None, {}), None)))


class FakeRouter(router_pb2_grpc.RouterServicer):
    def __init__(self, metrics_address: str):
        self.metrics_address = metrics_address

    def Workers(self, request, context):
        record = worker_pb2.WorkerRecord(id="w-1", model="m", role=worker_pb2.ROLE_AGGREGATED, capacity=4,
                                         triton_metrics_address=self.metrics_address)  # fmt: skip
        return router_pb2.WorkersResponse(workers=[router_pb2.WorkerStatus(record=record, in_flight=2,
                                                                           lease_remaining_ms=3000)])  # fmt: skip


@pytest.fixture
def metrics_server():
    """One HTTP server for both: /gateway is the gateway's metrics, /metrics the worker's Triton's."""
    pages = {"/gateway": gateway_text(1, 1, 0, 10, 0), "/metrics": engine_text(3, 4)}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = pages[self.path].encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_reading_gathers_every_source_and_names_the_one_that_did_not_answer(metrics_server):
    server = grpc.server(futures.ThreadPoolExecutor(2))
    router_pb2_grpc.add_RouterServicer_to_server(FakeRouter(metrics_server), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    nowhere = f"127.0.0.1:{free_port()}"
    try:
        with MeshReader(f"127.0.0.1:{port}", nowhere, f"http://{metrics_server}/gateway", None, "") as reader:
            reading = reader.read()
    finally:
        server.stop(0)
    assert [w.id for w in reading.workers] == ["w-1"] and reading.workers[0].metrics_address == metrics_server
    assert reading.gateway is not None and reading.gateway.total("kvmesh_gateway_requests") == 2
    assert reading.engines["w-1"].total("kvmesh_engine_running_sequences") == 2
    assert reading.index_blocks is None and len(reading.problems) == 1 and nowhere in reading.problems[0]


def test_an_unreachable_router_is_one_line_and_exit_1():
    result = CliRunner().invoke(app, ["top", "--once", "--router", f"127.0.0.1:{free_port()}"])
    assert result.exit_code == 1
    assert result.output.startswith("router at 127.0.0.1:") and "Traceback" not in result.output
