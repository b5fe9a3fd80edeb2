"""Config and token reload on the running process: SIGHUP, and watched files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import TOKEN, config_for, find, http_get, value, wait_for

from exporter.simulator import Fault, Simulator


class Process:
    def __init__(self, config: Path, data: dict[str, Any], log: Path) -> None:
        self.config, self.data, self.log_path = config, data, log
        self.url = f"http://{data['web']['listen_address']}"
        env = {k: v for k, v in os.environ.items() if k != "BUDDY_TOKEN"}
        with log.open("w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "exporter", "--config.file", str(config)],
                                         stdout=out, stderr=subprocess.STDOUT, env=env)  # fmt: skip
        wait_for(lambda: http_get(self.url + "/readyz")[0] == 200, timeout=20)

    def metrics(self) -> str:
        return http_get(self.url + "/metrics")[2].decode()

    def write(self, data: dict[str, Any]) -> None:
        self.config.write_text(yaml.safe_dump(data))

    def hup(self) -> None:
        self.proc.send_signal(signal.SIGHUP)

    @property
    def log(self) -> str:
        return self.log_path.read_text()


@pytest.fixture
def running(sim: Simulator, tmp_path: Path) -> Iterator[Process]:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    data = config_for(sim, buddy={"token_file": str(token_file)},
                      poll={"interval_seconds": 1, "stale_after_seconds": 60})  # fmt: skip
    data["targets"] = [{"workspace": "acme", "project": "shop", "pipeline_id": 1}]
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    process = Process(config, data, tmp_path / "exporter.log")
    try:
        yield process
    finally:
        process.proc.terminate()
        process.proc.wait(timeout=10)


def action_ids(text: str) -> set[str]:
    return {labels["action_id"] for labels, _ in find(text, "buddy_action_poll_success")}


def test_sighup_with_a_valid_config_takes_effect(running: Process) -> None:
    assert action_ids(running.metrics()) == {"101", "102"}
    assert value(running.metrics(), "buddy_exporter_config_last_reload_successful") == 1
    first = value(running.metrics(), "buddy_exporter_config_last_reload_success_timestamp_seconds")
    running.write({**running.data, "targets": [{"workspace": "acme", "project": "shop"}]})
    running.hup()
    wait_for(lambda: action_ids(running.metrics()) == {"101", "102", "201"}, timeout=15)
    out = running.metrics()
    assert value(out, "buddy_exporter_config_last_reload_successful") == 1
    assert value(out, "buddy_exporter_config_last_reload_success_timestamp_seconds") > first
    assert "configuration reloaded" in running.log


def test_sighup_with_an_invalid_config_keeps_the_old_one(running: Process, sim: Simulator) -> None:
    running.write({**running.data, "poll": {"interval_seconds": "often"}})
    running.hup()
    wait_for(
        lambda: value(running.metrics(), "buddy_exporter_config_last_reload_successful") == 0,
        timeout=15,
    )
    assert (
        "reload rejected, keeping the running configuration: poll.interval_seconds: Input should be a valid number"
        in running.log
    )
    # Still polling with the old config: a change in Buddy still shows.
    sim.update_action("acme", "shop", 1, 101, last_execution_status="FAILED")
    wait_for(
        lambda: (
            value(
                running.metrics(),
                "buddy_action_last_execution_status",
                action_id="101",
                status="FAILED",
            )
            == 1
        ),
        timeout=15,
    )
    assert running.proc.poll() is None
    assert "Traceback" not in running.log


def test_rotated_token_file_is_picked_up(running: Process, sim: Simulator, tmp_path: Path) -> None:
    sim.set_token("acme", "rotated-token-77")
    wait_for(lambda: value(running.metrics(), "buddy_up", workspace="acme") == 0, timeout=15)
    (tmp_path / "token").write_text("rotated-token-77\n")  # no signal: the file change is enough
    wait_for(lambda: value(running.metrics(), "buddy_up", workspace="acme") == 1, timeout=15)
    assert "rotated-token-77" not in running.log and TOKEN not in running.log


def _total(text: str, name: str) -> float:
    return sum(v for _, v in find(text, name))


def test_counters_never_go_down_across_reloads(running: Process, sim: Simulator) -> None:
    sim.add_fault(Fault(path=r"/actions/102$", status=500))
    wait_for(
        lambda: (
            (value(running.metrics(), "buddy_exporter_errors_total", reason="server_error") or 0)
            >= 2
        ),
        timeout=15,
    )
    before = running.metrics()
    # A change that keeps the client (poll settings) and one that replaces it (timeout).
    running.write({**running.data, "poll": {**running.data["poll"], "stale_after_seconds": 120}})
    running.hup()
    wait_for(lambda: running.log.count("configuration reloaded") == 1, timeout=15)
    running.write(
        {**running.data, "buddy": {**running.data["buddy"], "request_timeout_seconds": 3}}
    )
    running.hup()
    wait_for(lambda: running.log.count("configuration reloaded") == 2, timeout=15)
    running.hup()
    wait_for(lambda: running.log.count("configuration reloaded") == 3, timeout=15)
    after = running.metrics()
    for name in ("buddy_exporter_api_requests_total", "buddy_exporter_errors_total"):
        assert _total(after, name) >= _total(before, name), name
    for labels, count in find(before, "buddy_exporter_api_requests_total"):
        assert (value(after, "buddy_exporter_api_requests_total", **labels) or 0) >= count, labels


def test_landing_page_follows_a_reload(running: Process) -> None:
    assert b"polled every 1s" in http_get(running.url + "/")[2]
    running.write({**running.data, "poll": {"interval_seconds": 2, "stale_after_seconds": 60}})
    running.hup()
    wait_for(lambda: b"polled every 2s" in http_get(running.url + "/")[2], timeout=15)
