"""A `kvmesh top` frame as rich renderables: the workers' table, the rates over the interval, and
what could not be read. An unknown figure is "–"."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from kvmesh.cli.top_data import Frame, Rates, WorkerRow

UNKNOWN = "–"


def render(frame: Frame) -> RenderableType:
    parts: list[RenderableType] = [_workers(frame.workers) if frame.workers else Text("no live workers")]
    parts.append(_rates(frame.rates) if frame.rates else Text("rates: after a second reading of the gateway's metrics"))
    parts += [Text(problem, style="yellow") for problem in frame.problems]
    return Group(*parts)


def _workers(rows: tuple[WorkerRow, ...]) -> Table:
    table = Table("worker", "model", "role", "in flight", "running / waiting", "KV used", "index blocks", "hit ratio",
                  "lease", title="workers", title_justify="left")  # fmt: skip
    for row in rows:
        w = row.worker
        table.add_row(
            w.id,
            w.model,
            f"{w.role} ({w.state})" if w.state else w.role,
            f"{w.in_flight} / {w.capacity}",
            f"{_count(row.running)} / {_count(row.waiting)}",
            _percent(row.kv_usage),
            _count(row.index_blocks),
            _percent(row.hit_ratio),
            f"{w.lease_s:.1f}s",
        )
    return table


def _rates(rates: Rates) -> Table:
    table = Table("requests/s", "tokens/s in", "tokens/s out", "TTFT p50 / p99", "ITL p50 / p99", "prefix-cache hits",
                  "in flight", title=f"gateway, last {rates.interval_s:.1f}s", title_justify="left")  # fmt: skip
    by_status = ", ".join(f"{status} {rate:.1f}" for status, rate in rates.requests_per_s.items())
    total = sum(rates.requests_per_s.values())
    table.add_row(
        f"{total:.1f} ({by_status})" if by_status else "0",
        _rate(rates.prompt_tokens_per_s),
        _rate(rates.completion_tokens_per_s),
        _latencies(rates.ttft_s),
        _latencies(rates.itl_s),
        _percent(rates.cache_hit_ratio),
        _count(rates.in_flight),
    )
    return table


def _count(value: float | None) -> str:
    return UNKNOWN if value is None else f"{value:.0f}"


def _rate(value: float | None) -> str:
    return UNKNOWN if value is None else f"{value:.1f}"


def _percent(ratio: float | None) -> str:
    return UNKNOWN if ratio is None else f"{ratio:.0%}"


def _latencies(quantiles: tuple[float, float] | None) -> str:
    return UNKNOWN if quantiles is None else " / ".join(_ms(s) for s in quantiles)


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.1f} ms" if ms < 10 else f"{ms:.0f} ms"
