"""Shared fixtures: the simulator on loopback, config helpers, an exporter in a thread."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from exporter.app import Exporter
from exporter.config import Settings, build_settings, resolve_connections
from exporter.simulator import Simulator

TOKEN = "tok-3f9a1c77-secret-value"  # distinctive, so a leak is easy to grep for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            last = condition()
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


def http_get(
    url: str, headers: dict[str, str] | None = None, timeout: float = 10
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """All samples of an exposition, keyed by (name, labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def find(text: str, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """Samples called ``name`` whose labels include ``labels``."""
    found = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                found.append((s.labels, s.value))
    return found


def value(text: str, name: str, **labels: str) -> float | None:
    """The one sample matching, or None if there is none."""
    found = find(text, name, **labels)
    assert len(found) <= 1, f"{name}{labels} matches {len(found)} series"
    return found[0][1] if found else None


def current_status(text: str, **labels: str) -> list[str]:
    """The status values at 1 of the matching buddy_action_last_execution_status series."""
    return [
        lab["status"]
        for lab, v in find(text, "buddy_action_last_execution_status", **labels)
        if v == 1
    ]


@pytest.fixture
def sim() -> Iterator[Simulator]:
    simulator = Simulator(token=TOKEN)
    simulator.add_action("acme", "shop", 1, 101, "Build", "BUILD", pipeline_name="Deploy",
                         last_execution_status="SUCCESSFUL", retry_count=2, retry_interval=30,
                         timeout=600)  # fmt: skip
    simulator.add_action("acme", "shop", 1, 102, "Fetch bundle", "DOWNLOAD_PACKAGE_VERSION",
                         last_execution_status="FAILED", disabled=True, ignore_errors=True)  # fmt: skip
    simulator.add_action("acme", "shop", 2, 201, "Notify", "SLACK", pipeline_name="Release",
                         trigger_time="ON_FAILURE")  # fmt: skip
    with simulator:
        yield simulator


def targets_of(simulator: Simulator) -> list[dict[str, Any]]:
    return [
        {"workspace": ws, "project": project, "pipeline_id": pid, "action_id": action["id"]}
        for ws, project, pid, action in simulator.iter_actions()
    ]


def config_for(simulator: Simulator, **sections: Any) -> dict[str, Any]:
    """A config dict polling every action of ``simulator``; ``sections`` override parts."""
    data: dict[str, Any] = {
        # Short backoff and a wide budget so that retries and pacing do not slow the suite;
        # test_ratelimit and test_faults set the budget they measure.
        "buddy": {
            "api_url": simulator.url,
            "request_timeout_seconds": 2,
            "retry_backoff_seconds": 0.02,
            "max_requests_per_second": 1000,
            "burst": 100,
        },
        "poll": {"interval_seconds": 3600, "stale_after_seconds": 7200},
        "web": {"listen_address": f"127.0.0.1:{free_port()}"},
        "targets": targets_of(simulator),
    }
    for key, section in sections.items():
        if isinstance(section, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **section}
        else:
            data[key] = section
    return data


def write_config(tmp_path: Path, data: dict[str, Any], name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


class RunningExporter:
    """An :class:`Exporter` in its own thread and event loop, driven by the test."""

    def __init__(self, settings: Settings, token: str = TOKEN) -> None:
        self.settings = settings
        self.exporter = Exporter(settings, resolve_connections(settings, {"BUDDY_TOKEN": token}))
        self.loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="exporter-under-test", daemon=True)
        self._started = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.exporter.server.port}"

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def run() -> None:
            self._stop = asyncio.Event()
            self._started.set()
            await self.exporter.run(self._stop)

        self.loop.run_until_complete(run())

    def start(self, wait_ready: bool = True, ready_timeout: float = 10.0) -> RunningExporter:
        self._thread.start()
        self._started.wait(5)
        if wait_ready:
            wait_for(lambda: http_get(self.url + "/readyz")[0] == 200, timeout=ready_timeout)
        return self

    def poll(self) -> None:
        """Run one poll cycle now and wait for its snapshot to be served."""
        future = asyncio.run_coroutine_threadsafe(self.exporter.poller.poll_once(), self.loop)
        future.result(timeout=30)

    def metrics(self, headers: dict[str, str] | None = None) -> str:
        status, _, body = http_get(self.url + "/metrics", headers)
        assert status == 200
        return body.decode()

    def stop(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), "exporter did not stop"


@pytest.fixture
def run_exporter() -> Iterator[Callable[..., RunningExporter]]:
    """Start exporters from config dicts; all are stopped at the end of the test."""
    started: list[RunningExporter] = []

    def start(
        data: dict[str, Any],
        token: str = TOKEN,
        wait_ready: bool = True,
        ready_timeout: float = 10.0,
    ) -> RunningExporter:
        running = RunningExporter(build_settings(data), token)
        started.append(running)
        return running.start(wait_ready=wait_ready, ready_timeout=ready_timeout)

    yield start
    for running in started:
        running.stop()
