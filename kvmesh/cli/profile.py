"""`kvmesh profile`: measure an engine configuration on one worker of a fresh local mesh and write
the profile the planner reads (kvmesh/profile.py), with a plot of its curves.

Prefill: TTFT of one request alone, and prompt tokens/s of a burst of concurrent ones, at each
input length. Decode: the median inter-token latency of `batch` concurrent requests at each
context length. Prompts are random token ids, distinct per request, so no prefix cache helps.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path

import grpc
import typer
from google.protobuf import wrappers_pb2
from rich.progress import Progress

from kvmesh import models
from kvmesh.cli.local_mesh import LocalMesh
from kvmesh.profile import DecodePoint, EngineProfile, PrefillPoint
from kvmesh.v1 import inference_pb2, inference_pb2_grpc

PREFILL_BURST = 4
DECODE_TOKENS = 24
FIRST_ID, LAST_ID = 1000, 20000  # ordinary tokens of any of our models' vocabularies


def profile(
    out: Path = typer.Option(..., help="the profile file to write (JSON)"),
    engine: str = typer.Option("sim", help="the Triton model a worker runs: sim or vllm"),
    engine_args: str = typer.Option("{}", help="JSON engine-argument overrides"),
    isl: list[int] = typer.Option([128, 512, 1024, 2048], help="prompt lengths measured"),
    batch: list[int] = typer.Option([1, 2, 4, 8], help="decode batch sizes measured"),
    context: list[int] = typer.Option([128, 1024], help="decode context lengths measured"),
    plot: Path = typer.Option(None, help="PNG of the curves (default: next to the profile)"),
) -> None:
    """Measure prefill and decode of one engine configuration; write its profile."""
    steps = len(isl) + len(batch) * len(context)
    with tempfile.TemporaryDirectory() as logs, Progress() as progress:
        task = progress.add_task(f"starting a {engine} worker", total=steps + 1)
        mesh = LocalMesh.start(Path(logs), extra_args=("--engine", engine, "--engine-args", engine_args))
        try:
            progress.advance(task)
            measured = asyncio.run(_measure(mesh, isl, batch, context, lambda what: progress.update(
                task, advance=1, description=what)))  # fmt: skip
        finally:
            mesh.stop()
    result = EngineProfile(engine=engine, model=models.DEFAULT_MODEL, **measured)
    result.save(out)
    png = _plot(result, plot or out.with_suffix(".png"))
    typer.echo(f"wrote {out} and {png}")


async def _measure(mesh: LocalMesh, isls, batches, contexts, step) -> dict:
    rng = random.Random(0)
    async with grpc.aio.insecure_channel(mesh.grpc) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        prefill = []
        for n in isls:
            ttft = statistics.median([(await _run(stub, mesh.model, _prompt(rng, n), 1))[0] for _ in range(3)])
            start = time.perf_counter()
            await asyncio.gather(*(_run(stub, mesh.model, _prompt(rng, n), 1) for _ in range(PREFILL_BURST)))
            tokens_per_s = PREFILL_BURST * n / (time.perf_counter() - start)
            prefill.append(PrefillPoint(isl=n, ttft_ms=ttft, tokens_per_s=tokens_per_s))
            step(f"prefill {n} tokens: TTFT {ttft:.0f} ms")
        decode = []
        for b in batches:
            for c in contexts:
                runs = await asyncio.gather(*(_run(stub, mesh.model, _prompt(rng, c), DECODE_TOKENS) for _ in range(b)))
                itl = statistics.median([gap for _, gaps in runs for gap in gaps])
                decode.append(DecodePoint(batch=b, context=c, itl_ms=itl))
                step(f"decode batch {b} context {c}: ITL {itl:.1f} ms")
    return {"prefill": prefill, "decode": decode}


def _prompt(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(FIRST_ID, LAST_ID) for _ in range(n)]


async def _run(stub, model: str, ids: list[int], max_tokens: int) -> tuple[float, list[float]]:
    """TTFT and the gaps between later tokens, milliseconds."""
    request = inference_pb2.GenerateRequest(
        model=model,
        token_ids=inference_pb2.TokenIds(ids=ids),
        sampling=inference_pb2.SamplingParams(
            max_tokens=wrappers_pb2.UInt32Value(value=max_tokens), ignore_eos=True,
            temperature=wrappers_pb2.FloatValue(value=0.0),
        ),
    )  # fmt: skip
    start = last = time.perf_counter()
    ttft, gaps = None, []
    async for response in stub.Generate(request, timeout=600):
        now = time.perf_counter()
        if ttft is None:
            ttft = (now - start) * 1000
        else:
            gaps += [(now - last) * 1000 / max(len(response.token_ids), 1)] * max(len(response.token_ids), 1)
        last = now
    return ttft, gaps


def _plot(result: EngineProfile, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot([p.isl for p in result.prefill], [p.ttft_ms for p in result.prefill], "o-")
    left.set(xlabel="prompt tokens", ylabel="TTFT ms (alone)", title=f"{result.engine}: prefill")
    for c in result.contexts():
        points = sorted((p for p in result.decode if p.context == c), key=lambda p: p.batch)
        right.plot([p.batch for p in points], [p.itl_ms for p in points], "o-", label=f"context {c}")
    right.set(xlabel="batch", ylabel="ITL ms", title=f"{result.engine}: decode")
    right.legend()
    fig.tight_layout()
    fig.savefig(path)
    return path


def add_commands(app: typer.Typer) -> None:
    app.command()(profile)
