"""bench/wrk.py drives Debian's wrk: every body goes out once and in order, with the headers asked
for, and a run that would repeat bodies is refused (the overhead benchmark's prompts must never repeat)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench import wrk

pytestmark = pytest.mark.skipif(not wrk.available(), reason="wrk is not installed (scripts/setup.sh installs it)")


@pytest.fixture
def server():
    received: list[int] = []
    seen_headers: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"])))["n"])
            seen_headers.append(dict(self.headers))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}/", received, seen_headers
    httpd.shutdown()
    httpd.server_close()


def test_every_body_goes_out_once_in_order(server):
    url, received, _ = server
    figures = wrk.run(url, [{"n": i} for i in range(200_000)], concurrency=1, seconds=1)
    assert figures["failed"] == 0 and figures["requests"] > 10
    # wrk counts the responses it read; the server may have taken one more as the run ended.
    assert figures["requests"] <= len(received) <= figures["requests"] + 1
    # wrk calls request() once before it connects, so the first body may never be sent.
    assert received[0] in (0, 1) and received == list(range(received[0], received[0] + len(received)))
    assert 0 < figures["e2e_ms_p50"] <= figures["e2e_ms_p99"]
    assert figures["requests_per_s"] == pytest.approx(figures["requests"] / figures["duration_s"], rel=0.01)


def test_a_run_longer_than_its_bodies_is_refused(server):
    url, _, _ = server
    with pytest.raises(RuntimeError, match="some repeated"):
        wrk.run(url, [{"n": i} for i in range(3)], concurrency=1, seconds=1)


def test_every_request_carries_the_headers_given(server):
    url, _, seen_headers = server
    figures = wrk.run(url, [{"n": i} for i in range(200_000)], 2, 1, headers={"Authorization": "Bearer kvm-x"})
    assert figures["failed"] == 0 and len(seen_headers) > 10
    assert all(h["Authorization"] == "Bearer kvm-x" and h["Content-Type"] == "application/json" for h in seen_headers)
