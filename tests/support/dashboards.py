"""The Grafana dashboards in deploy/grafana/dashboards/ as Prometheus queries: every panel's every
target, with Grafana's variables replaced the way Grafana would for "All" and a given window."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DASHBOARDS = Path(__file__).parents[2] / "deploy" / "grafana" / "dashboards"
# Grafana's built-in interval variables; `$__rate_interval` is at least four scrape intervals.
BUILTINS = ("__rate_interval", "__interval", "__range")


@dataclass(frozen=True)
class Target:
    dashboard: str
    panel: str
    ref: str
    expr: str


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def dashboards() -> dict[str, dict]:
    return {path.stem: load(path) for path in sorted(DASHBOARDS.glob("*.json"))}


def targets(dashboard: dict, name: str) -> Iterator[Target]:
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield Target(name, panel["title"], target["refId"], target["expr"])


def _panels(panels: list[dict]) -> Iterator[dict]:
    for panel in panels:  # rows may nest theirs
        yield panel
        yield from _panels(panel.get("panels", []))


def substitute(expr: str, values: dict[str, str]) -> str:
    """`$name`, `${name}` and `[[name]]` replaced; a variable without a value is an error (a typo)."""

    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name not in values:
            raise KeyError(f"no value for ${name} in {expr!r}")
        return values[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", value, expr)


def variable_values(dashboard: dict, window: str, rate_window: str) -> dict[str, str]:
    """Each template variable as its "All" (its allValue), and the built-in windows."""
    values = {"__interval": window, "__rate_interval": rate_window, "__range": window}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            values[variable["name"]] = variable.get("allValue") or ".*"
    return values
