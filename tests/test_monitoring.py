"""Static checks of monitoring/alerts.yaml, its promtool tests, and monitoring/dashboard.json.

The live checks (metric names served by a running exporter, a real Prometheus
firing the alerts, the dashboard's queries answered by it) are in test_alerts_e2e.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tools import promtool, tool

REPO = Path(__file__).resolve().parent.parent
ALERTS = REPO / "monitoring" / "alerts.yaml"
ALERT_TESTS = REPO / "monitoring" / "alerts.test.yaml"
DASHBOARD = REPO / "monitoring" / "dashboard.json"

REQUIRED_ALERTS = {
    "BuddyExporterDown", "BuddyApiUnreachable", "BuddyExporterPollsStale",
    "BuddyApiRateLimitNearlyExhausted", "BuddyActionFailed", "BuddyPipelineFailing",
    "BuddyActionNewlyDisabled",
}  # fmt: skip
# Grafana's built-in variables, substituted when a query is checked or run.
GRAFANA_BUILTINS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
# Metrics Prometheus makes itself, not the exporter.
PROMETHEUS_METRICS = {"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds"}


# -- PromQL metric names -------------------------------------------------------------

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
             "unless", "offset", "bool", "inf", "nan"}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression (or a Grafana label_values() query) reads."""
    for builtin, value in GRAFANA_BUILTINS.items():
        expr = expr.replace(builtin, value)
    label_values = re.fullmatch(
        r"\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*", expr, re.S
    )
    if label_values:
        expr = label_values.group(1)
    s = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    s = re.sub(r"'(?:\\.|[^'\\])*'", "''", s)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![A-Za-z0-9_:.])[A-Za-z_:][A-Za-z0-9_:]*", s):
        if s[m.end() :].lstrip().startswith("("):
            continue  # a function
        if m.group().lower() in _KEYWORDS:
            continue
        names.add(m.group())
    return names


@pytest.mark.parametrize(("expr", "names"), [
    ('buddy_up == 0', {"buddy_up"}),
    ('sum without (endpoint) (increase(buddy_exporter_api_requests_total{code=~"401|403"}[10m])) > 0',
     {"buddy_exporter_api_requests_total"}),
    ('(a{status="FAILED", x=~"$workspace"} == 1) and ignoring (status) (b == 0) '
     '* on (w, p) group_left (url, action_type) c_info', {"a", "b", "c_info"}),
    ('time() - x_timestamp_seconds > 900', {"x_timestamp_seconds"}),
    ('min_over_time(d[1h] offset 5m) == 0 or vector(0)', {"d"}),
    ('rate(e_total[$__rate_interval]) * 1e3', {"e_total"}),
    ('label_values(buddy_action_info{workspace=~"$workspace"}, project)', {"buddy_action_info"}),
    ('up{job=~".*buddy-exporter.*"} unless bool f', {"up", "f"}),
])  # fmt: skip
def test_metric_names_extractor(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


# -- alert rules ---------------------------------------------------------------------


def load_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"]]


def alert_metric_names() -> set[str]:
    return set().union(*(metric_names(r["expr"]) for r in load_rules())) - PROMETHEUS_METRICS


def test_promtool_check_rules() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(load_rules())} rules found" in result.stdout


def test_promtool_test_rules() -> None:
    result = subprocess.run([promtool(), "test", "rules", str(ALERT_TESTS)],
                            capture_output=True, text=True, cwd=ALERT_TESTS.parent)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_test_rules_catches_a_broken_rule(tmp_path: Path) -> None:
    # The unit tests must fail when the disabled filter is dropped from BuddyActionFailed.
    broken = ALERTS.read_text(encoding="utf-8").replace(
        "(buddy_action_disabled == 0)", "(buddy_action_disabled >= 0)"
    )
    assert broken != ALERTS.read_text(encoding="utf-8")
    (tmp_path / "alerts.yaml").write_text(broken, encoding="utf-8")
    shutil.copy(ALERT_TESTS, tmp_path / "alerts.test.yaml")
    result = subprocess.run([promtool(), "test", "rules", "alerts.test.yaml"],
                            capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert result.returncode != 0
    assert "BuddyActionFailed" in result.stdout + result.stderr


def test_required_alerts_exist_with_severity_summary_and_description() -> None:
    rules = load_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    assert set(names) >= REQUIRED_ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert rule["annotations"]["description"].strip(), rule["alert"]


@pytest.mark.parametrize(
    "alert", ["BuddyActionFailed", "BuddyActionNewlyDisabled", "BuddyPipelineFailing"]
)
def test_object_alerts_name_the_object_and_link_it(alert: str) -> None:
    rule = next(r for r in load_rules() if r["alert"] == alert)
    text = rule["annotations"]["description"]
    wanted = ["workspace", "project", "pipeline", "url"]
    if alert.startswith("BuddyAction"):
        wanted.append("action")
    for label in wanted:
        assert "{{ $labels." + label + " }}" in text, (alert, label)
    assert "_info" in rule["expr"] and "group_left" in rule["expr"], (
        "url comes from the info metric"
    )


def test_failure_alerts_skip_disabled_objects() -> None:
    rules = {r["alert"]: r["expr"] for r in load_rules()}
    assert re.search(
        r"and\s+ignoring\s*\(status\)\s*\(buddy_action_disabled == 0\)", rules["BuddyActionFailed"]
    )
    assert "buddy_pipeline_disabled == 1" in rules["BuddyActionFailed"]
    assert re.search(r"unless\s+ignoring\s*\(status\)\s*\(buddy_pipeline_disabled == 1\)",
                     rules["BuddyPipelineFailing"])  # fmt: skip


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    tests = yaml.safe_load(ALERT_TESTS.read_text(encoding="utf-8"))
    assert tests["rule_files"] == ["alerts.yaml"]
    fires: set[str] = set()
    silent: set[str] = set()
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {r["alert"] for r in load_rules()}
    assert names - fires == set(), "alerts never tested firing"
    assert names - silent == set(), "alerts never tested silent"


# -- dashboard -----------------------------------------------------------------------


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, expr) for every panel target and every query variable."""
    board = load_dashboard()
    out = []
    for panel in all_panels(board["panels"]):
        for target in panel.get("targets", []):
            out.append(
                (f"panel {panel['id']} {panel['title']!r} {target['refId']}", target["expr"])
            )
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            out.append((f"variable {var['name']}", query))
    return out


def dashboard_metric_names() -> set[str]:
    return (
        set().union(*(metric_names(expr) for _, expr in dashboard_queries())) - PROMETHEUS_METRICS
    )


def test_dashboard_identity() -> None:
    board = load_dashboard()
    assert board["uid"] == "buddy-exporter"
    assert "__inputs" not in board and "__requires" not in board
    assert board["title"]
    assert isinstance(board["schemaVersion"], int)


def test_dashboard_panel_ids_are_unique_and_panels_do_not_overlap() -> None:
    panels = list(all_panels(load_dashboard()["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    cells: dict[tuple[int, int], int] = {}
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['id']} overlaps panel {cells[(x, y)]}"
                cells[(x, y)] = p["id"]


def test_dashboard_variables_datasource_and_chain() -> None:
    variables = {v["name"]: v for v in load_dashboard()["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    chain = {"workspace": [], "project": ["$workspace"], "pipeline": ["$workspace", "$project"]}
    for name, parents in chain.items():
        var = variables[name]
        assert var["type"] == "query"
        assert var["datasource"]["uid"] == "${datasource}"
        query = var["query"]["query"]
        assert query.startswith("label_values(") and query.rstrip(")").endswith(name)
        for parent in parents:
            assert parent in query, (name, parent)


def test_dashboard_uses_only_the_datasource_variable_and_defined_variables() -> None:
    board = load_dashboard()
    defined = {v["name"] for v in board["templating"]["list"]}
    for panel in all_panels(board["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel.get("targets"), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    for where, expr in dashboard_queries():
        for builtin in GRAFANA_BUILTINS:
            expr = expr.replace(builtin, "")
        for var in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", expr):
            assert var in defined, f"{where} uses undefined variable ${var}"


def test_dashboard_has_the_required_panels() -> None:
    panels = [p for p in all_panels(load_dashboard()["panels"]) if p["type"] != "row"]
    types = {p["type"] for p in panels}
    assert {"table", "state-timeline", "stat", "timeseries"} <= types
    used = dashboard_metric_names()
    for metric in ("buddy_action_last_execution_status", "buddy_action_disabled", "buddy_action_retries",
                   "buddy_action_timeout_seconds", "buddy_exporter_poll_duration_seconds",
                   "buddy_exporter_errors_total", "buddy_exporter_api_rate_limit_remaining"):  # fmt: skip
        assert metric in used, metric
    titles = " ".join(p["title"].lower() for p in panels)
    for word in ("failing", "disabled", "retries", "timeout", "status"):
        assert word in titles, word


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # promtool parses each query as a recording rule (Grafana's built-ins substituted).
    rules = []
    for i, (where, expr) in enumerate(dashboard_queries()):
        for builtin, value in GRAFANA_BUILTINS.items():
            expr = expr.replace(builtin, value)
        lv = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", expr, re.S)
        rules.append({"record": f"dashboard:query_{i}", "expr": lv.group(1) if lv else expr,
                      "labels": {"where": where}})  # fmt: skip
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8"
    )
    result = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_yamllint_on_monitoring_and_chart_values() -> None:
    config = "{extends: default, rules: {line-length: disable, document-start: disable, comments: {min-spaces-from-content: 1}}}"
    files = [ALERTS, ALERT_TESTS, REPO / "helm" / "buddy-exporter" / "values.yaml",
             REPO / "helm" / "buddy-exporter" / "Chart.yaml",
             *sorted((REPO / "helm" / "buddy-exporter").glob("ci*/*.yaml"))]  # fmt: skip
    result = subprocess.run([tool("yamllint"), "--strict", "-d", config, *map(str, files)],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
