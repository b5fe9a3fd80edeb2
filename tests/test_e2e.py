"""End to end: the real process, a real Prometheus scraping it, promtool on its output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import TOKEN, config_for, free_port, http_get, wait_for, write_config
from tools import debian_tool as require

from exporter.simulator import Fault, Simulator


@pytest.fixture
def exporter_process(
    sim: Simulator, tmp_path: Path
) -> Iterator[tuple[str, subprocess.Popen[str], Path]]:
    data = config_for(sim, poll={"interval_seconds": 1, "stale_after_seconds": 60})
    address = data["web"]["listen_address"]
    config = write_config(tmp_path, data)
    log_path = tmp_path / "exporter.log"
    env = {**os.environ, "BUDDY_TOKEN": TOKEN}
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "exporter", "--config.file", str(config), "--log.level", "debug"],
                                stdout=log, stderr=subprocess.STDOUT, env=env, text=True)  # fmt: skip
    url = f"http://{address}"
    try:
        wait_for(lambda: http_get(url + "/readyz")[0] == 200, timeout=20)
        yield url, proc, log_path
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_promtool_accepts_the_metrics_text(
    exporter_process: tuple[str, subprocess.Popen[str], Path],
) -> None:
    url, _, _ = exporter_process
    status, _, body = http_get(url + "/metrics")
    assert status == 200
    result = subprocess.run(
        [require("promtool"), "check", "metrics"], input=body, capture_output=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_sigterm_stops_the_process_quickly_and_logs_hold_no_token(
    exporter_process: tuple[str, subprocess.Popen[str], Path],
) -> None:
    _, proc, log_path = exporter_process
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert time.monotonic() - started < 5
    log = log_path.read_text()
    assert "shutting down" in log
    assert TOKEN not in log


def _query(prom: str, expr: str) -> list[dict[str, Any]]:
    status, _, body = http_get(f"{prom}/api/v1/query?query={urllib.parse.quote(expr)}")
    assert status == 200, body
    result: list[dict[str, Any]] = json.loads(body)["data"]["result"]
    return result


def test_real_prometheus_scrapes_the_exporter(
    sim: Simulator, exporter_process: tuple[str, subprocess.Popen[str], Path], tmp_path: Path
) -> None:
    url, _, _ = exporter_process
    target = url.removeprefix("http://")
    prom_port = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n  - job_name: buddy\n    static_configs:\n      - targets: ['{target}']\n"
    )
    prom = subprocess.Popen(
        [require("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("w"),
    )  # fmt: skip
    base = f"http://127.0.0.1:{prom_port}"
    try:
        expr = 'buddy_action_last_execution_status{action_id="102"} == 1'
        result = wait_for(lambda: _query(base, expr), timeout=60, interval=0.5)
        labels = result[0]["metric"]
        assert labels["status"] == "FAILED"
        assert (labels["workspace"], labels["project"], labels["pipeline_id"]) == (
            "acme",
            "shop",
            "1",
        )
        assert labels["pipeline"] == "Deploy" and labels["action"] == "Fetch bundle"
        assert labels["job"] == "buddy"
        # The whole state set made it, and exactly one state per action is 1.
        per_action = _query(base, "sum by (action_id) (buddy_action_last_execution_status)")
        assert sorted((r["metric"]["action_id"], r["value"][1]) for r in per_action) == [
            ("101", "1"),
            ("102", "1"),
            ("201", "1"),
        ]
        count = _query(base, 'count(buddy_action_last_execution_status{action_id="101"})')
        assert count[0]["value"][1] == "13"
        # A change in Buddy reaches Prometheus.
        sim.update_action("acme", "shop", 1, 102, last_execution_status="SUCCESSFUL")
        wait_for(lambda: _query(base, 'buddy_action_last_execution_status{action_id="102",status="SUCCESSFUL"} == 1'),
                 timeout=30, interval=0.5)  # fmt: skip
        assert _query(base, "up")[0]["value"][1] == "1"
    finally:
        prom.terminate()
        prom.wait(timeout=10)


def test_sigterm_during_the_first_cycle_exits_cleanly(sim: Simulator, tmp_path: Path) -> None:
    sim.add_fault(Fault(delay=3.0, passthrough=True))
    data = config_for(sim, poll={"interval_seconds": 1, "stale_after_seconds": 60})
    log_path = tmp_path / "exporter.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "exporter", "--config.file", str(write_config(tmp_path, data))],
                                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "BUDDY_TOKEN": TOKEN})  # fmt: skip
    url = f"http://{data['web']['listen_address']}"
    wait_for(lambda: http_get(url + "/healthz")[0] == 200, timeout=20)
    assert http_get(url + "/readyz")[0] == 503  # still in the first cycle
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert time.monotonic() - started < 5
    text = log_path.read_text()
    assert "Traceback" not in text and "CancelledError" not in text, text
