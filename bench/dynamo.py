"""NVIDIA Dynamo 1.6.1 as a baseline: its mocker (simulated engines) behind its frontend with KV
routing, in a network namespace of its own, for bench.overhead to load beside kvmesh.

    .venv/bin/python -m bench.dynamo install     (what bench.overhead does first; idempotent, 1-2 min)

Installed into a venv of its own (`<kvmesh cache>/dynamo-1.6.1/`): `ai-dynamo` itself pins
packages this package index cannot satisfy, so its runtime and that runtime's dependencies go in
first and `ai-dynamo` after them without its own. A marker file says the install finished.

It serves kvmesh's converted model folder: config.json and tokenizer.json linked, and a
tokenizer_config.json that carries the chat template (Dynamo reads it there, kvmesh's folder keeps
it in chat_template.jinja); no weights. Discovery is a directory, requests go over TCP and KV
events over ZMQ, every host it binds is 127.0.0.1; its ZMQ sockets still bind every interface,
hence the namespace with only loopback. The mocker's `--speedup-ratio 0` does not remove its
delays in 1.6.1; 1000 does. Dynamo writes ~/.cache/dynamo; `serving` removes it afterwards.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kvmesh import models, processes
from tests.support.hosts import Host

VERSION = "1.6.1"
VENV = models.cache_dir() / f"dynamo-{VERSION}"
PYTHON = VENV / "bin" / "python"
INSTALLED = VENV / ".installed"
# ai-dynamo's own dependencies at 1.6.1, less ai-dynamo-runtime (pinned on its own).
RUNTIME_DEPS = ("aiohttp<4.0,>=3.14.3", "certifi", "kubernetes<33.0.0,>=32.0.1", "msgspec>=0.19.0",
                "prometheus-client<1.0,>=0.23.1", "pyzmq>=26.0.0", "redis<9.0.0,>=6.2.0", "tqdm>=4.0.0",
                "transformers>=4.56.0", "typing-extensions>=4.10.0", "zstandard<1.0,>=0.23.0")  # fmt: skip
# Every address Dynamo binds besides its frontend's HTTP port.
HOSTS = ("DYN_TCP_RPC_HOST", "DYN_EVENT_PLANE_HOST", "DYN_SYSTEM_HOST", "DYN_TCP_RESPONSE_STREAM_HOST")
# What Dynamo writes under the home directory whatever its settings.


def install() -> None:
    """Dynamo into VENV, once."""
    if INSTALLED.exists():
        return
    print(f"installing NVIDIA Dynamo {VERSION} into {VENV} (1-2 min, once)", flush=True)
    pip = [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(VENV)],
        [*pip, "-U", "pip"],
        [*pip, f"ai-dynamo-runtime=={VERSION}", *RUNTIME_DEPS],
        [*pip, "--no-deps", f"ai-dynamo=={VERSION}"],
    ]
    for argv in steps:
        print("  " + " ".join(argv), flush=True)
        subprocess.run(argv, check=True)
    INSTALLED.write_text(VERSION + "\n")


def model_folder(source: Path, target: Path) -> Path:
    """`source` (a kvmesh model folder) as Dynamo reads a model, in `target`: no weights."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json"):
        (target / name).unlink(missing_ok=True)
        (target / name).symlink_to(source / name)
    config = json.loads((source / "tokenizer_config.json").read_text())
    config["chat_template"] = (source / "chat_template.jinja").read_text()
    (target / "tokenizer_config.json").write_text(json.dumps(config))
    return target


@dataclass
class Dynamo:
    http: str  # the frontend's base URL, inside its host
    model: str
    processes: list[subprocess.Popen]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]


@contextlib.contextmanager
def serving(
    host: Host, scratch: Path, model: str, workers: int, block_size: int, num_blocks: int, max_num_seqs: int,
    max_num_batched_tokens: int, port: int = 8000, timeout_s: float = 120,
) -> Iterator[Dynamo]:  # fmt: skip
    """Dynamo's mocker (`workers` simulated engines with this KV cache and batch, engine time ≈ 0)
    and frontend (KV routing) in `host`, until the block exits; logs and state in `scratch`."""
    install()
    # A dead run's discovery entries would be workers to the frontend; the processes append to their logs.
    shutil.rmtree(scratch / "discovery", ignore_errors=True)
    for stale in scratch.glob("*.log"):
        stale.unlink()
    folder = model_folder(models.resolve(model), scratch / "model")
    # Its cache (~/.cache/dynamo) goes under scratch: a user's own is never touched.
    env = {"DYN_FILE_KV": str(scratch / "discovery"), "DYN_DISCOVERY_BACKEND": "file", "DYN_REQUEST_PLANE": "tcp",
           "DYN_EVENT_PLANE": "zmq", "HF_HUB_OFFLINE": "1", "XDG_CACHE_HOME": str(scratch / "cache"),
           "HOME": str(scratch / "home")}  # fmt: skip
    env |= {name: "127.0.0.1" for name in HOSTS}
    mocker = [str(PYTHON), "-m", "dynamo.mocker", "--model-path", str(folder), "--model-name", model, "--num-workers",
              str(workers), "--block-size", str(block_size), "--num-gpu-blocks-override", str(num_blocks),
              "--max-num-seqs", str(max_num_seqs), "--max-num-batched-tokens", str(max_num_batched_tokens),
              "--speedup-ratio", "1000", "--decode-speedup-ratio", "1000"]  # fmt: skip
    frontend = [str(PYTHON), "-m", "dynamo.frontend", "--http-host", "127.0.0.1", "--http-port", str(port),
                "--router-mode", "kv", "--discovery-backend", "file"]  # fmt: skip
    running = Dynamo(f"http://127.0.0.1:{port}", model, [])
    try:
        for name, argv in (("mocker", mocker), ("frontend", frontend)):
            running.processes.append(host.spawn(argv, env, scratch / f"{name}.log"))
        _wait_ready(host, running, scratch, timeout_s)
        yield running
    finally:
        for process in running.processes:
            processes.terminate(process, grace_s=10)
        shutil.rmtree(scratch / "cache", ignore_errors=True)
        shutil.rmtree(scratch / "home", ignore_errors=True)


def _wait_ready(host: Host, dynamo: Dynamo, scratch: Path, timeout_s: float) -> None:
    """Until one chat completion succeeds, from inside `host` (the workers register after the frontend listens)."""
    body = json.dumps({"model": dynamo.model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1})
    argv = ["curl", "-sf", "-m", "5", "-H", "content-type: application/json", "-d", body,
            f"{dynamo.http}/v1/chat/completions"]  # fmt: skip
    deadline = time.monotonic() + timeout_s
    while host.run(argv, timeout_s=10).returncode != 0:
        if any(p.poll() is not None for p in dynamo.processes) or time.monotonic() > deadline:
            logs = "\n".join(f"--- {log.name} ---\n{log.read_text(errors='replace')[-2000:]}"
                             for log in sorted(scratch.glob("*.log")))  # fmt: skip
            raise RuntimeError(f"Dynamo did not get ready:\n{logs}")
        time.sleep(0.5)


if __name__ == "__main__":
    if sys.argv[1:] != ["install"]:
        raise SystemExit(f"usage: {sys.argv[0]} install")
    install()
