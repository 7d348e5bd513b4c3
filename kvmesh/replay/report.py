"""Figures of a replay: latency percentiles, prefix hit ratio, throughput, per-worker load; JSON
and PNG plots."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from kvmesh.replay.runner import Outcome

PERCENTILES = (50, 90, 99)


def _percentiles(values: list[float], scale: float = 1000.0) -> dict[str, float]:
    if not values:
        return {f"p{p}": float("nan") for p in PERCENTILES}
    return {f"p{p}": round(float(np.percentile(values, p)) * scale, 2) for p in PERCENTILES}


def summarize(outcomes: list[Outcome], wall_s: float) -> dict:
    ok = [o for o in outcomes if not o.error]
    prompt = sum(o.prompt_tokens for o in ok)
    per_worker = Counter(o.worker_id for o in ok)
    return {
        "requests": len(outcomes),
        "errors": len(outcomes) - len(ok),
        "error_examples": sorted({o.error for o in outcomes if o.error})[:3],
        "wall_s": round(wall_s, 2),
        "requests_per_s": round(len(ok) / wall_s, 3),
        "output_tokens_per_s": round(sum(o.output_tokens for o in ok) / wall_s, 1),
        "prefix_hit_ratio": round(sum(o.cached_tokens for o in ok) / prompt, 4) if prompt else 0.0,
        "ttft_ms": _percentiles([o.ttft_s for o in ok if o.ttft_s is not None]),
        "itl_ms": _percentiles([o.itl_s for o in ok if o.itl_s is not None]),
        "e2e_ms": _percentiles([o.e2e_s for o in ok if o.e2e_s is not None]),
        "requests_per_worker": dict(sorted(per_worker.items())),
    }


def write(out_dir: Path, name: str, summary: dict, outcomes: list[Outcome], title: str = "") -> list[Path]:
    """`<name>.json` and `<name>.png` (TTFT over time, TTFT CDF, requests per worker), the plot titled
    `title` (default: `name`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{name}.json"
    json_path.write_text(json.dumps(summary, indent=2) + "\n")
    ok = [o for o in outcomes if o.ttft_s is not None]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].scatter([o.sent_s for o in ok], [o.ttft_s * 1000 for o in ok], s=3)
    axes[0].set(xlabel="sent at (s)", ylabel="TTFT (ms)", yscale="log", title="TTFT over the replay")
    ttft = np.sort([o.ttft_s * 1000 for o in ok])
    axes[1].plot(ttft, np.linspace(0, 1, len(ttft)))
    axes[1].set(xlabel="TTFT (ms)", ylabel="share of requests", xscale="log", title="TTFT CDF")
    workers = summary["requests_per_worker"]
    axes[2].bar(range(len(workers)), list(workers.values()))
    axes[2].set(xlabel="worker", ylabel="requests", title=f"hit ratio {summary['prefix_hit_ratio']:.1%}")
    fig.suptitle(title or name)
    fig.tight_layout()
    png_path = out_dir / f"{name}.png"
    fig.savefig(png_path, dpi=90)
    plt.close(fig)
    return [json_path, png_path]
