"""The Grafana dashboards and the recording rules without a Prometheus: their shape (datasource
variable, units, the model and worker variables), every target's PromQL parsed by promtool once its
variables are substituted, and every recorded series they read recorded by the rules."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from kvmesh.cli import prometheus
from tests.support import dashboards

RULES = prometheus.RULES
PROMTOOL = prometheus.UNPACKED.with_name("promtool")
BOARDS = dashboards.dashboards()


def test_the_five_dashboards_are_there_with_unique_uids():
    assert set(BOARDS) == {"overview", "routing-kv", "disaggregation", "planner", "workers"}
    assert len({board["uid"] for board in BOARDS.values()}) == len(BOARDS)


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_every_panel_reads_the_datasource_variable_and_has_a_unit(name):
    board = BOARDS[name]
    assert board["schemaVersion"] == 39
    names = {v["name"] for v in board["templating"]["list"]}
    assert {"DS_PROMETHEUS", "model", "worker"} <= names
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert all(t["datasource"]["uid"] == "${DS_PROMETHEUS}" for t in panel["targets"]), panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        assert panel["description"], panel["title"]


def test_substitution_replaces_every_form_and_refuses_an_unknown_variable():
    values = {"model": ".*", "__rate_interval": "15s"}
    expr = 'rate(x{model=~"$model", a=~"${model}", b=~"[[model]]"}[$__rate_interval])'
    assert dashboards.substitute(expr, values) == 'rate(x{model=~".*", a=~".*", b=~".*"}[15s])'
    with pytest.raises(KeyError, match="modle"):
        dashboards.substitute('x{model=~"$modle"}', values)


@pytest.mark.skipif(not PROMTOOL.is_file(), reason="promtool: scripts/setup.sh unpacks Prometheus")
def test_every_query_parses_and_the_rules_check(tmp_path: Path):
    rules = []
    for name, board in BOARDS.items():
        values = dashboards.variable_values(board, "5m", "15s")
        for target in dashboards.targets(board, name):
            rules.append({"record": f"check:{len(rules)}", "expr": dashboards.substitute(target.expr, values)})
    checked = tmp_path / "queries.yml"
    checked.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    for path in (RULES, checked):
        done = subprocess.run([str(PROMTOOL), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


def test_every_recorded_series_a_dashboard_reads_is_recorded():
    recorded = {rule["record"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}
    read = {
        series
        for name, board in BOARDS.items()
        for target in dashboards.targets(board, name)
        for series in re.findall(r"\bkvmesh:[\w:]+", target.expr)
    }
    assert read and read <= recorded, read - recorded
