"""A `kvmesh top` frame as rich renderables: the workers' table, the rates over the interval, and
what could not be read. An unknown figure is "–"."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Column, Table
from rich.text import Text

from kvmesh.cli.top_data import Frame, Rates, WorkerRow

UNKNOWN = "–"


def render(frame: Frame) -> RenderableType:
    parts: list[RenderableType] = [_workers(frame.workers) if frame.workers else Text("no live workers")]
    parts.append(_rates(frame.rates) if frame.rates else Text("rates: after a second reading of the gateway's metrics"))
    parts += [Text(problem, style="yellow") for problem in frame.problems]
    return Group(*parts)


def _workers(rows: tuple[WorkerRow, ...]) -> Table:
    """Narrow enough for 80 columns: the model is the title when every worker serves the same one."""
    models = sorted({row.worker.model for row in rows})
    one_model = len(models) == 1
    title = f"workers of {models[0]}" if one_model else "workers"
    table = Table(Column("worker", no_wrap=True), title=title, title_justify="left")
    for header in ([] if one_model else ["model"]) + ["role", "in flight", "run/wait", "KV used", "blocks", "hits",
                                                      "lease"]:  # fmt: skip
        table.add_column(header)
    for row in rows:
        w = row.worker
        table.add_row(
            w.id,
            *([] if one_model else [w.model]),
            f"{w.role} ({w.state})" if w.state else w.role,
            f"{w.in_flight}/{w.capacity}",
            f"{_count(row.running)}/{_count(row.waiting)}",
            _percent(row.kv_usage),
            _count(row.index_blocks),
            _percent(row.hit_ratio),
            f"{w.lease_s:.1f}s",
        )
    return table


def _rates(rates: Rates) -> RenderableType:
    table = Table.grid(padding=(0, 2))
    by_status = ", ".join(f"{status} {rate:.1f}" for status, rate in rates.requests_per_s.items())
    total = sum(rates.requests_per_s.values())
    for name, value in (
        ("requests/s", f"{total:.1f} ({by_status})" if by_status else "0"),
        ("tokens/s", f"in {_rate(rates.prompt_tokens_per_s)}, out {_rate(rates.completion_tokens_per_s)}"),
        ("TTFT p50 / p99", _latencies(rates.ttft_s)),
        ("ITL p50 / p99", _latencies(rates.itl_s)),
        ("prefix-cache hits", _percent(rates.cache_hit_ratio)),
        ("in flight", _count(rates.in_flight)),
    ):
        table.add_row(name, value)
    return Group(Text(f"gateway, last {rates.interval_s:.1f}s", style="italic"), table)


def _count(value: float | None) -> str:
    return UNKNOWN if value is None else f"{value:.0f}"


def _rate(value: float | None) -> str:
    return UNKNOWN if value is None else f"{value:.1f}"


def _percent(ratio: float | None) -> str:
    if ratio is None:
        return UNKNOWN
    return f"{ratio:.1%}" if ratio < 0.1 else f"{ratio:.0%}"


def _latencies(quantiles: tuple[float, float] | None) -> str:
    return UNKNOWN if quantiles is None else " / ".join(_ms(s) for s in quantiles)


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.1f} ms" if ms < 10 else f"{ms:.0f} ms"
