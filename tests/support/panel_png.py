"""A dashboard's time-series panels drawn with matplotlib from Prometheus' query_range: what its
Grafana panels show, for readers without a Grafana."""

from __future__ import annotations

import math
import re
from pathlib import Path

import httpx
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tests.support import dashboards  # noqa: E402

COLUMNS = 3
UNITS = {"s": "seconds", "reqps": "requests/s", "percentunit": "share", "short": "", "ops": "/s", "Bps": "bytes/s"}


def series(prometheus: str, expr: str, start: float, end: float, step_s: float) -> list[tuple[dict, list, list]]:
    params = {"query": expr, "start": start, "end": end, "step": step_s}
    data = httpx.get(f"{prometheus}/api/v1/query_range", params=params, timeout=30).json()["data"]["result"]
    return [(s["metric"], [float(t) - start for t, _ in s["values"]], [float(v) for _, v in s["values"]]) for s in data]


def legend(template: str, labels: dict) -> str:
    for key, value in labels.items():
        template = template.replace("{{" + key + "}}", value)
    return re.sub(r"\s*\{\{\w+\}\}", "", template)  # a label the series lacks


def render(board: dict, prometheus: str, start: float, end: float, rate_window: str, out: Path) -> None:
    panels = [p for p in board["panels"] if p["type"] == "timeseries"]
    values = dashboards.variable_values(board, f"{round(end - start)}s", rate_window)
    rows = math.ceil(len(panels) / COLUMNS)
    figure, axes = plt.subplots(rows, COLUMNS, figsize=(5 * COLUMNS, 3.2 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        for target in panel["targets"]:
            expr = dashboards.substitute(target["expr"], values)
            for labels, times, points in series(prometheus, expr, start, end, 1.0):
                ax.plot(times, points, label=legend(target["legendFormat"], labels), linewidth=1)
        unit = panel["fieldConfig"]["defaults"]["unit"]
        ax.set_title(panel["title"], fontsize=10)
        ax.set_xlabel("seconds into the load", fontsize=8)
        ax.set_ylabel(UNITS.get(unit, unit), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="upper left")
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    figure.suptitle(f"{board['title']}: a disaggregated sim mesh under load (tests/integration/test_dashboards.py)")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=90)
    plt.close(figure)
