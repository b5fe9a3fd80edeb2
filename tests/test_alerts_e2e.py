"""Live checks of the monitoring files against the real exporter and a real Prometheus.

The exporter runs as its own process (``python -m exporter``) against the simulator
over loopback; Debian's Prometheus scrapes it every second and evaluates
``monitoring/alerts.yaml`` unchanged every second.

Two exporters run:
- ``core``: one configured target per action (the core issue's config shape);
  the alert tests read it.
- ``contract``: the config shape the Helm chart renders (a whole workspace, the
  request budget and fetch mode, a second workspace whose action answers an
  HTML page); the metric-name test reads it too, so every metric the alerts and
  the dashboard use must really be served.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from test_monitoring import (
    ALERTS,
    GRAFANA_BUILTINS,
    alert_metric_names,
    dashboard_metric_names,
    dashboard_queries,
)
from tools import debian_tool as require

from exporter.simulator import Fault, Simulator

TOKEN = "e2e-alerts-token-5d41402abc4b2a76"
WORKSPACE = "acme"
PROJECT = "shop"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except (OSError, ValueError, KeyError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@dataclass
class Process:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    url: str

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("alerts-e2e")


@pytest.fixture(scope="module")
def simulator() -> Iterator[Simulator]:
    sim = Simulator(token=TOKEN)
    # Pipeline 1: a good action, a failed one (must alert), a failed but disabled one (must not).
    sim.add_action(WORKSPACE, PROJECT, 1, 101, "Build", "BUILD", pipeline_name="Deploy",
                   last_execution_status="SUCCESSFUL", retry_count=2, retry_interval=30)  # fmt: skip
    sim.add_action(WORKSPACE, PROJECT, 1, 102, "Upload bundle", "DOWNLOAD_PACKAGE_VERSION",
                   last_execution_status="FAILED", timeout=300)  # fmt: skip
    sim.add_action(WORKSPACE, PROJECT, 1, 103, "Notify", "SLACK",
                   last_execution_status="FAILED", disabled=True)  # fmt: skip
    # Pipeline 2 failed as a whole.
    sim.add_pipeline(WORKSPACE, PROJECT, 2, "Release", last_execution_status="FAILED")
    sim.add_action(WORKSPACE, PROJECT, 2, 201, "Tag", "BUILD", last_execution_status="FAILED")
    # A second workspace whose one action answers an HTML page with status 200.
    sim.add_action("globex", "web", 7, 701, "Lint", "BUILD", pipeline_name="CI")
    sim.add_fault(Fault(path=r"^/workspaces/globex/.*actions/701$", status=200,
                        body="<html><body>Maintenance</body></html>", content_type="text/html"))  # fmt: skip
    with sim:
        yield sim


def start_exporter(name: str, config: dict[str, Any], workdir: Path, port: int) -> Process:
    token_file = workdir / f"{name}-token"
    token_file.write_text(TOKEN + "\n", encoding="utf-8")
    config = {**config, "buddy": {**config["buddy"], "token_file": str(token_file)}}
    config_file = workdir / f"{name}-config.yaml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    log = workdir / f"{name}-exporter.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUDDY_")}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--config.file", str(config_file),
             "--web.listen-address", f"127.0.0.1:{port}", "--log.level", "debug"],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    process = Process(name, proc, log, f"http://127.0.0.1:{port}")

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(
                f"the {name} exporter exited with {proc.returncode}:\n{process.output()}"
            )
        return get(process.url + "/readyz")[0] == 200

    try:
        wait_for(ready, f"the {name} exporter to be ready", timeout=30)
    except BaseException:
        process.stop()
        raise
    return process


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    return {"core": free_port(), "contract": free_port(), "prometheus": free_port()}


@pytest.fixture(scope="module")
def core_exporter(simulator: Simulator, workdir: Path, ports: dict[str, int]) -> Iterator[Process]:
    config = {
        "buddy": {"api_url": simulator.url, "request_timeout_seconds": 2},
        "poll": {"interval_seconds": 1, "stale_after_seconds": 60},
        "targets": [
            {"workspace": ws, "project": project, "pipeline_id": pid, "action_id": action["id"]}
            for ws, project, pid, action in simulator.iter_actions()
            if ws == WORKSPACE
        ],
    }
    process = start_exporter("core", config, workdir, ports["core"])
    yield process
    process.stop()


@pytest.fixture(scope="module")
def contract_exporter(
    simulator: Simulator, workdir: Path, ports: dict[str, int]
) -> Iterator[Process]:
    # The shape of the ConfigMap the Helm chart renders (see helm/buddy-exporter/values.yaml).
    chart_values = yaml.safe_load(
        (ALERTS.parent.parent / "helm" / "buddy-exporter" / "values.yaml").read_text("utf-8")
    )["config"]
    config = {
        "buddy": {**chart_values["buddy"], "api_url": simulator.url, "request_timeout_seconds": 2,
                  "max_requests_per_second": 50},
        "poll": {**chart_values["poll"], "interval_seconds": 1, "stale_after_seconds": 60,
                 "discovery_interval_seconds": 1},
        "targets": [{"workspace": WORKSPACE}, {"workspace": "globex"}],
    }  # fmt: skip
    process = start_exporter("contract", config, workdir, ports["contract"])
    yield process
    process.stop()


@pytest.fixture(scope="module")
def prometheus(core_exporter: Process, workdir: Path, ports: dict[str, int]) -> Iterator[str]:
    targets = [f"127.0.0.1:{ports['core']}", f"127.0.0.1:{ports['contract']}"]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {"job_name": "buddy-exporter", "static_configs": [{"targets": targets}]}
        ],
    }
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    check = subprocess.run([require("promtool"), "check", "config", str(config_file)],
                           capture_output=True, text=True)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [require("prometheus"), f"--config.file={config_file}",
             f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{ports['prometheus']}"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    process = Process("prometheus", proc, log, f"http://127.0.0.1:{ports['prometheus']}")
    try:
        wait_for(lambda: get(process.url + "/-/ready")[0] == 200, "Prometheus to be ready")
        yield process.url
    finally:
        process.stop()


def api(prometheus: str, path: str, **params: str) -> Any:
    url = f"{prometheus}/api/v1/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    status, body = get(url)
    data = json.loads(body)
    assert status == 200 and data["status"] == "success", body
    return data["data"]


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = api(prometheus, "query", query=expr)["result"]
    return result


def alerts(prometheus: str, name: str) -> list[dict[str, Any]]:
    return [a for a in api(prometheus, "alerts")["alerts"] if a["labels"]["alertname"] == name]


def served_names(url: str) -> set[str]:
    status, body = get(url + "/metrics")
    assert status == 200
    names = set()
    for family in text_string_to_metric_families(body.decode()):
        names.update(sample.name for sample in family.samples)
    return names


def test_rules_load_and_evaluate_without_errors(prometheus: str, core_exporter: Process) -> None:
    wait_for(lambda: query(prometheus, 'buddy_action_info{action_id="102"}'),
             "Prometheus to scrape the exporter")  # fmt: skip
    expected = {rule["alert"] for group in yaml.safe_load(ALERTS.read_text("utf-8"))["groups"]
                for rule in group["rules"]}  # fmt: skip

    def evaluated() -> list[dict[str, Any]]:
        rules = [r for g in api(prometheus, "rules")["groups"] for r in g["rules"]]
        # A rule not yet evaluated reports the zero time.
        done = [r for r in rules if not r.get("lastEvaluation", "0001").startswith("0001")]
        return rules if len(done) == len(rules) == len(expected) else []

    rules = wait_for(evaluated, "every rule to be evaluated")
    assert {r["name"] for r in rules} == expected
    for rule in rules:
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))


def test_failed_action_alert_is_pending_or_firing_with_its_link(
    prometheus: str, core_exporter: Process, simulator: Simulator
) -> None:
    instance = core_exporter.url.removeprefix("http://")

    def failed_action_alerts() -> list[dict[str, Any]]:
        return [a for a in alerts(prometheus, "BuddyActionFailed")
                if a["labels"]["instance"] == instance]  # fmt: skip

    found = wait_for(failed_action_alerts, "BuddyActionFailed for the core exporter", timeout=60)
    by_action = {a["labels"]["action_id"]: a for a in found}
    # 102 failed and is enabled; 103 failed but is disabled; 101 succeeded.
    assert "102" in by_action and "103" not in by_action and "101" not in by_action
    alert = by_action["102"]
    assert alert["state"] in {"pending", "firing"}
    url = f"{simulator.app_url}/{WORKSPACE}/{PROJECT}/pipelines/pipeline/1/action/102/edit"
    labels = alert["labels"]
    assert labels["url"] == url
    assert (labels["workspace"], labels["project"], labels["pipeline"], labels["action"]) == (
        WORKSPACE, PROJECT, "Deploy", "Upload bundle")  # fmt: skip
    assert labels["job"] == "buddy-exporter" and labels["severity"] == "warning"
    description = alert["annotations"]["description"]
    for text in ('"Upload bundle"', '"Deploy"', f'"{PROJECT}"', f'"{WORKSPACE}"', url):
        assert text in description, text
    assert alert["annotations"]["url"] == url

    # When the action succeeds again, the alert goes away.
    simulator.update_action(WORKSPACE, PROJECT, 1, 102, last_execution_status="SUCCESSFUL")
    try:
        wait_for(lambda: "102" not in {a["labels"]["action_id"] for a in failed_action_alerts()},
                 "BuddyActionFailed for 102 to resolve", timeout=60)  # fmt: skip
    finally:
        simulator.update_action(WORKSPACE, PROJECT, 1, 102, last_execution_status="FAILED")


def test_failed_pipeline_alert_is_pending_or_firing(
    prometheus: str, contract_exporter: Process
) -> None:
    instance = contract_exporter.url.removeprefix("http://")
    found = wait_for(
        lambda: [a for a in alerts(prometheus, "BuddyPipelineFailing")
                 if a["labels"]["instance"] == instance],
        "BuddyPipelineFailing for the contract exporter", timeout=60,
    )  # fmt: skip
    assert {a["labels"]["pipeline_id"] for a in found} == {"2"}
    assert found[0]["state"] in {"pending", "firing"}
    assert found[0]["labels"]["url"].endswith(f"/{WORKSPACE}/{PROJECT}/pipelines/pipeline/2")


def test_every_metric_in_alerts_and_dashboard_is_served(
    core_exporter: Process, contract_exporter: Process
) -> None:
    used = alert_metric_names() | dashboard_metric_names()
    assert {"buddy_action_last_execution_status", "buddy_up", "buddy_action_info"} <= used
    served = served_names(core_exporter.url) | served_names(contract_exporter.url)
    missing = used - served
    # Give the exporters a few more cycles (discovery, the HTML error) before judging.
    deadline = time.monotonic() + 10
    while missing and time.monotonic() < deadline:
        time.sleep(0.5)
        served |= served_names(core_exporter.url) | served_names(contract_exporter.url)
        missing = used - served
    assert not missing, f"used in monitoring/ but not served by the exporter: {sorted(missing)}"


def substitute(expr: str) -> str:
    for builtin, value in GRAFANA_BUILTINS.items():
        expr = expr.replace(builtin, value)
    for var in ("workspace", "project", "pipeline"):
        expr = expr.replace(f"${var}", ".*")
    return expr


def test_dashboard_queries_run_on_prometheus(prometheus: str, core_exporter: Process) -> None:
    wait_for(lambda: query(prometheus, 'buddy_action_disabled{action_id="103"}'),
             "Prometheus to scrape the exporter")  # fmt: skip
    for where, expr in dashboard_queries():
        if expr.startswith("label_values("):
            inner = substitute(expr)[len("label_values(") :].rsplit(",", 1)
            label = inner[1].strip(" )")
            values = {r["metric"][label] for r in query(prometheus, inner[0])}
            if label in ("workspace", "project"):
                assert {WORKSPACE, PROJECT} & values, (where, values)
            continue
        query(prometheus, substitute(expr))  # raises on a PromQL or execution error
    # The status table lists every action with its current status and type.
    table = next(
        expr for where, expr in dashboard_queries() if where.endswith("'Status per action' A")
    )
    rows = {r["metric"]["action_id"]: r["metric"] for r in query(prometheus, substitute(table))
            if r["metric"]["instance"] == core_exporter.url.removeprefix("http://")}  # fmt: skip
    assert {"101", "102", "103", "201"} <= set(rows)
    assert rows["101"]["status"] == "SUCCESSFUL" and rows["103"]["status"] == "FAILED"
    assert rows["102"]["action_type"] == "DOWNLOAD_PACKAGE_VERSION" and rows["102"]["url"]
    # The failing-actions stat counts 102 and 201 (103 is disabled) for this exporter.
    failing = next(expr for where, expr in dashboard_queries() if "'Failing actions' A" in where)
    instance = core_exporter.url.removeprefix("http://")
    scoped = substitute(failing).replace(
        "buddy_action_disabled == 0", f'buddy_action_disabled{{instance="{instance}"}} == 0'
    )
    assert scoped != substitute(failing)
    # (An earlier test flips 102 to SUCCESSFUL and back; wait for the scrape that sees it.)
    wait_for(lambda: query(prometheus, scoped)[0]["value"][1] == "2", "2 failing actions")
