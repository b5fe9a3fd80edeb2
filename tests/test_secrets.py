"""The token never shows: not in any log line (any level, tracebacks included), page or output.

Buddy error bodies here echo the token back on purpose, the worst case for a leak.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import TOKEN, RunningExporter, config_for, free_port, http_get, wait_for, write_config

from exporter.simulator import Fault, Simulator

Start = Callable[..., RunningExporter]
PAGES = ("/", "/metrics", "/healthz", "/readyz", "/nope")
ECHO = json.dumps({"errors": [{"message": f"bad token {TOKEN}"}]})


class Everything(logging.Handler):
    """Every record of every logger, formatted with its traceback, by a plain formatter."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def all_logs() -> Iterator[Everything]:
    handler = Everything()
    root = logging.getLogger()
    saved = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    noisy = {name: logging.getLogger(name).level for name in ("httpx", "httpcore", "exporter")}
    for name in noisy:
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(saved)
    for name, level in noisy.items():
        logging.getLogger(name).setLevel(level)


def leaking_rounds() -> list[list[Fault]]:
    """Three cycles of faults on acme whose bodies carry the token."""
    html = f"<html><body>token {TOKEN}</body></html>"
    return [
        [
            Fault(path=r"/actions/101$", status=500, body=html, content_type="text/html"),
            Fault(path=r"/actions/102$", status=429, body=html, content_type="text/html",
                  headers={"Retry-After": "0"}, times=1),
            Fault(path=r"/actions/201$", status=200, body=f'{{"id": 201, "name": "{TOKEN}'),
        ],
        [
            Fault(path=r"/actions/101$", status=200, truncate=True,
                  body=json.dumps({"id": 101, "name": TOKEN})),
            Fault(path=r"/actions/102$", delay=0.5, passthrough=True),
            Fault(path=r"/actions/201$", status=404, body=ECHO),
        ],
        [
            Fault(path=r"/actions/101$", status=200, body=html, content_type="text/html"),
            Fault(path=r"/actions/102$", status=502, body=json.dumps({"error": TOKEN})),
            Fault(path=r"/actions/201$", status=400, body=ECHO),
        ],
    ]  # fmt: skip


@pytest.fixture
def leaky_sim(sim: Simulator) -> Simulator:
    """acme (three actions) plus beta, which answers 401, and gamma, which answers 403."""
    sim.add_action("beta", "web", 3, 301, "Lint")
    sim.add_action("gamma", "ops", 4, 401, "Backup")
    sim.add_fault(Fault(path=r"^/workspaces/beta/", status=401, body=ECHO))
    sim.add_fault(Fault(path=r"^/workspaces/gamma/", status=403, body=ECHO))
    return sim


def test_token_is_in_no_log_line_and_no_page_across_the_fault_cases(
    leaky_sim: Simulator, run_exporter: Start, all_logs: Everything
) -> None:
    sim = leaky_sim
    data = config_for(sim, buddy={"request_timeout_seconds": 0.3, "max_retries": 1},
                      log={"level": "debug"})  # fmt: skip
    exporter = run_exporter(data)
    pages = [http_get(exporter.url + p)[2].decode() for p in PAGES]
    for faults in leaking_rounds():
        for fault in faults:
            sim.add_fault(fault)
        exporter.poll()
        pages += [http_get(exporter.url + p)[2].decode() for p in PAGES]
        for fault in faults:
            sim.faults.remove(fault)
    logged = "\n".join(all_logs.lines)
    # The cases really happened and were logged ...
    for expected in ("unauthorized", "forbidden", "server_error", "invalid_json", "connection",
                     "timeout", "not_found", "http_error", "bad token <redacted>", "DEBUG httpcore"):  # fmt: skip
        assert expected in logged, expected
    assert "problem:" in pages[-2]  # /readyz lists the cycle's problems ...
    # ... and the token is nowhere.
    assert TOKEN not in logged
    for page in pages:
        assert TOKEN not in page


def test_token_is_in_no_output_of_the_command(leaky_sim: Simulator, tmp_path: Path) -> None:
    """The real command, with its own logging, at debug level, against the leaky simulator."""
    sim = leaky_sim
    # Also a field whose value is the token: its problem line quotes the value.
    sim.update_action("acme", "shop", 2, 201, timeout=TOKEN)
    for fault in leaking_rounds()[0][:2]:
        sim.add_fault(fault)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")  # a trailing newline, as editors and Secrets leave it
    port = free_port()
    data = config_for(sim, poll={"interval_seconds": 0.3, "stale_after_seconds": 60},
                      web={"listen_address": f"127.0.0.1:{port}"})  # fmt: skip
    data["buddy"] = {**data["buddy"], "token_file": str(token_file)}
    config = write_config(tmp_path, data)
    env = {k: v for k, v in os.environ.items() if k != "BUDDY_TOKEN"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "--config.file", str(config), "--log.level", "debug"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: http_get(url + "/readyz")[0] == 200)
        wait_for(lambda: sim.request_count(r"/actions/") >= 12)  # a few cycles
        pages = [http_get(url + p)[2].decode() for p in PAGES]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err[-2000:]
    assert "level=DEBUG" in err and "unauthorized" in err and "forbidden" in err
    assert "timeout: " in err and "<redacted>" in err  # the field problem, value redacted
    assert TOKEN not in out + err
    for page in pages:
        assert TOKEN not in page
    assert "problem:" in pages[3]


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_token_is_in_no_help_or_version_output(flag: str, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"buddy:\n  token: {TOKEN}\ntargets:\n  - workspace: acme\n")
    env = {**os.environ, "BUDDY_TOKEN": TOKEN, "BUDDY_EXPORTER_CONFIG": str(config)}
    result = subprocess.run([sys.executable, "-m", "exporter", flag], capture_output=True,
                            text=True, env=env, timeout=30)  # fmt: skip
    assert result.returncode == 0
    assert ("usage:" in result.stdout) if flag == "--help" else ("buddy-exporter" in result.stdout)
    assert TOKEN not in result.stdout + result.stderr


def test_pages_before_the_first_cycle_hold_no_token(sim: Simulator, run_exporter: Start) -> None:
    sim.add_fault(Fault(delay=1.0, passthrough=True, times=3))
    exporter = run_exporter(config_for(sim), wait_ready=False)
    wait_for(lambda: http_get(exporter.url + "/healthz")[0] == 200)
    started = time.monotonic()
    for path in PAGES:
        assert TOKEN not in http_get(exporter.url + path)[2].decode()
    assert time.monotonic() - started < 1.0  # these were served before the first cycle ended
    wait_for(lambda: http_get(exporter.url + "/readyz")[0] == 200)
    for path in PAGES:
        assert TOKEN not in http_get(exporter.url + path)[2].decode()
