"""A native load generator (Debian's wrk) for the throughput of a level: the Python one
(bench/loadgen.py) spends CPU milliseconds a request on the two cores the mesh runs on, wrk almost none.
It times whole responses only (no TTFT), so the Python one stays for the latency breakdown."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SCRIPT = Path(__file__).with_name("wrk_bodies.lua")


def available() -> bool:
    return shutil.which("wrk") is not None


def run(url: str, bodies: list[dict], concurrency: int, seconds: int, headers: dict[str, str] | None = None) -> dict:
    """Closed loop: `concurrency` connections POST `bodies` in order, each once, for `seconds`, with
    `headers` on every request. Returns requests, requests_per_s, failed and e2e p50/p99 (ms)."""
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl") as file:
        file.writelines(json.dumps(body) + "\n" for body in bodies)
        file.flush()
        # One thread: the bodies' order is then the requests' order, and it has CPU to spare.
        argv = ["wrk", "-t", "1", "-c", str(concurrency), "-d", f"{seconds}s", "-s", str(SCRIPT), url]
        for name, value in (headers or {}).items():
            argv += ["-H", f"{name}: {value}"]
        done = subprocess.run(argv, env=os.environ | {"BODIES": file.name}, capture_output=True, text=True, check=True)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    # wrk calls request() once before it connects: that body is taken but never sent.
    if figures["requests"] >= len(bodies):
        raise RuntimeError(f"wrk sent {figures['requests']} requests but had {len(bodies)} bodies: some repeated")
    figures["requests_per_s"] = round(figures["requests"] / figures["duration_s"], 1)
    return figures
