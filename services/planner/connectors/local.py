"""The `local` connector: starts and stops `python -m services.worker` processes on this machine.
It counts a pool's workers from the registry plus the ones it started that have not registered
yet (a worker takes seconds to minutes to load its engine), and only ever stops its own."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.planner.connectors import ROLE_POOL, PoolByPool


@dataclass
class _Started:
    worker_id: str
    pool: str
    process: subprocess.Popen


class LocalConnector(PoolByPool):
    name = "local"

    def __init__(
        self,
        registered: Callable[[], dict[str, int]],
        worker_args: list[str],
        engine: str,
        log_dir: Path,
    ):
        """`registered()`: worker id → role of the live workers; `worker_args`: what every
        worker gets besides its Triton model, id and cores."""
        self.registered = registered
        self.worker_args = worker_args
        self.engine = engine
        self.log_dir = log_dir
        self.cores = sorted(os.sched_getaffinity(0))
        self.started: list[_Started] = []

    def current(self) -> dict[str, int]:
        self.started = [s for s in self.started if s.process.poll() is None]
        live = self.registered()
        counts = {"prefill": 0, "decode": 0}
        for role in live.values():
            counts[ROLE_POOL.get(role, "decode")] += 1
        for s in self.started:
            if s.worker_id not in live:  # on its way
                counts[s.pool] += 1
        return counts

    def scale(self, pool: str, replicas: int) -> str:
        have = self.current()[pool]
        if replicas > have:
            ids = [self._start(pool) for _ in range(replicas - have)]
            return f"started {', '.join(ids)}"
        mine = [s for s in self.started if s.pool == pool][::-1]  # newest first
        stopping = mine[: have - replicas]
        for s in stopping:
            s.process.terminate()  # the worker drains: deregisters, lets Triton finish its requests
        self.started = [s for s in self.started if s not in stopping]
        others = have - replicas - len(stopping)
        note = f" (the other {others} are not mine)" if others else ""
        return f"stopping {', '.join(s.worker_id for s in stopping) or 'none'}{note}"

    def _start(self, pool: str) -> str:
        worker_id = f"w-{pool[0]}{secrets.token_hex(3)}"
        cores = str(self.cores[len(self.started) % len(self.cores)])
        self.log_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "services.worker", *self.worker_args, "--triton-model", f"{self.engine}_{pool}",
                "--worker-id", worker_id, "--cpus", cores]  # fmt: skip
        with open(self.log_dir / f"planner-{worker_id}.log", "ab") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.started.append(_Started(worker_id, pool, process))
        return worker_id

    def close(self) -> None:
        for s in self.started:
            s.process.terminate()
        for s in self.started:
            try:
                s.process.wait(30)
            except subprocess.TimeoutExpired:
                s.process.kill()
