"""The measurements: render, scrape, poll, memory and start-up, each side by side.

Everything measured in one phase runs in the same minute on the same machine,
so the ratios between our figure and its baseline hold even when absolute
figures move with the machine's noise.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import yaml
from prometheus_client import start_http_server
from prometheus_client.exposition import generate_latest
from pydantic import SecretStr

from bench import loadgen
from bench.sim import TOKEN, simulator_process
from exporter.client import BuddyClient
from exporter.config import FetchMode, StatusSeries, Target
from exporter.exposition import Encoder
from exporter.poller import Poller
from exporter.render import (
    Exposition,
    Format,
    MetricsStore,
    RenderOptions,
    compress,
    families_of,
    registry_for,
)
from exporter.server import Health, MetricsServer
from exporter.snapshot import Snapshot

LATENCY = 0.02  # injected per simulated request in the poll phase
UNLIMITED_RATE = 1e6  # requests per second: no client-side rate limit in the benchmark
FORMS = [(Format.TEXT, False), (Format.TEXT, True)]


@dataclass(frozen=True)
class Budget:
    """How much of each phase to run; ``quick`` is the seconds-long CI run."""

    sizes: tuple[int, ...]
    stock_scrape_sizes: tuple[int, ...]
    poll_get_sizes: tuple[int, ...]
    poll_concurrency: int
    soak_actions: int
    soak_cycles: int
    startup_actions: int
    cell_seconds: float
    max_requests: int
    deep_tree: int  # actions per pipeline in the memory runs (fewer requests per cycle)
    soak_series: str = "current"


FULL = Budget(
    sizes=(1_000, 10_000, 50_000),
    stock_scrape_sizes=(1_000, 10_000),
    poll_get_sizes=(1_000, 10_000),
    poll_concurrency=8,
    soak_actions=10_000,
    soak_cycles=100,
    startup_actions=1_000,
    cell_seconds=0.25,
    max_requests=200,
    deep_tree=100,
)
QUICK = Budget(
    sizes=(100,),
    stock_scrape_sizes=(100,),
    poll_get_sizes=(100,),
    poll_concurrency=8,
    soak_actions=100,
    soak_cycles=3,
    startup_actions=100,
    cell_seconds=0.05,
    max_requests=5,
    deep_tree=10,
)


# -- snapshots ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Cycle:
    snapshot: Snapshot
    wall: float
    cpu: float
    requests: int


async def _cycles(url: str, mode: FetchMode, concurrency: int, count: int) -> list[Cycle]:
    # Buddy's own rate limit (buddy.max_requests_per_second) is lifted: this measures the
    # exporter, not the budget a token is allowed.
    client = BuddyClient(
        url,
        SecretStr(TOKEN),
        timeout=60,
        max_connections=concurrency,
        max_requests_per_second=UNLIMITED_RATE,
        burst=1000,
    )

    async def publish(_: Snapshot) -> None:
        return None  # rendering is measured on its own

    poller = Poller(
        [Target(workspace="acme")],
        {"acme": client},
        publish,
        interval_seconds=60,
        stale_after_seconds=3600,
        discovery_interval_seconds=3600,
        fetch_mode=mode,
        max_concurrency=concurrency,
        per_page=100,
    )
    out = []
    try:
        for _ in range(count):
            wall, cpu = time.perf_counter(), time.process_time()
            snapshot = await poller.poll_once()
            out.append(
                Cycle(
                    snapshot,
                    time.perf_counter() - wall,
                    time.process_time() - cpu,
                    snapshot.cycle_requests or 0,
                )
            )
    finally:
        await client.aclose()
    return out


def poll_cycles(url: str, mode: FetchMode, concurrency: int, count: int = 1) -> list[Cycle]:
    return asyncio.run(_cycles(url, mode, concurrency, count))


def series_count(snapshot: Snapshot, mode: StatusSeries) -> int:
    return sum(len(f.samples) for f in families_of(snapshot, RenderOptions(60, mode)))


# -- render ------------------------------------------------------------------------------
@dataclass(frozen=True)
class RenderFigures:
    series: int
    text_bytes: int
    ours: float  # collect + encode
    stock: float  # generate_latest over a registry (collect + encode)
    ours_encode: float  # encode only, over already collected families
    stock_encode: float
    collect: float
    gzip: float


def _best(fn: Callable[[], Any], runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def render_figures(
    snapshot: Snapshot, mode: StatusSeries, runs: int, encode_only: bool = True
) -> RenderFigures:
    """Our render as the exporter runs it, against ``generate_latest`` over a registry.

    ours = ``Exposition.build`` (collect the families with the cyclic GC paused, then our
    encoder); stock = ``generate_latest(registry)``, as a user would call it. The encode
    columns put both encoders over one already-collected list of families.
    """
    options = RenderOptions(60, mode)
    ours = _best(lambda: Exposition(snapshot, options).build([(Format.TEXT, False)]), runs)
    stock = _best(lambda: generate_latest(registry_for(snapshot, options)), runs)
    collect = _best(lambda: families_of(snapshot, options), runs)
    families = families_of(snapshot, options)
    plain = Encoder().text(families)
    nan = float("nan")
    ours_encode = _best(lambda: Encoder().text(families), runs) if encode_only else nan
    stock_encode = _best(lambda: generate_latest(_Fixed(families)), runs) if encode_only else nan
    gz = _best(lambda: compress(plain), 1)
    return RenderFigures(
        sum(len(f.samples) for f in families), len(plain), ours, stock, ours_encode,
        stock_encode, collect, gz,
    )  # fmt: skip


class _Fixed:
    def __init__(self, families: list[Any]) -> None:
        self._families = families

    def collect(self) -> Iterator[Any]:
        return iter(self._families)


# -- scrape ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScrapeFigures:
    median: float
    p99: float
    rate: float
    requests: int
    mean_bytes: float


class _FloorHandler(BaseHTTPRequestHandler):
    """The least a Python server on the same stack can do: write bytes it already holds."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # as ours: no 40 ms delayed-ACK wait on small bodies
    bodies: ClassVar[dict[bool, bytes]] = {}

    def do_GET(self) -> None:
        compressed = "gzip" in self.headers.get("Accept-Encoding", "")
        body = self.bodies[compressed]
        self.send_response(200)
        self.send_header("Content-Type", Format.TEXT.content_type)
        self.send_header("Content-Length", str(len(body)))
        if compressed:
            self.send_header("Content-Encoding", "gzip")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None


class _FloorServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        return None  # the load generator hanging up at the end of a cell


def built_store(snapshot: Snapshot, options: RenderOptions) -> MetricsStore:
    """A store with the text forms built ahead, as after any poll cycle once asked for."""
    store = MetricsStore(snapshot, options)
    for fmt, compressed in FORMS:
        store.get(fmt, compressed)
    store.publish(snapshot)
    return store


@contextmanager
def _serving(kind: str, store: MetricsStore) -> Iterator[int]:
    """Serve the store's snapshot the ``kind`` way ("ours", "stock", "floor"); yields the port."""
    if kind == "ours":
        server = MetricsServer(
            "127.0.0.1:0", store, Health(lambda: True, lambda: (True, "")), lambda: ""
        )
        server.start()
        try:
            yield server.port
        finally:
            server.stop()
    elif kind == "stock":
        registry = registry_for(store.current.snapshot, store.options)
        httpd, thread = start_http_server(0, "127.0.0.1", registry)
        try:
            yield int(httpd.server_address[1])
        finally:
            httpd.shutdown()
            httpd.server_close()
            thread.join(5)
    else:
        bodies = {c: store.current.get(Format.TEXT, c) for c in (False, True)}
        handler = type("Floor", (_FloorHandler,), {"bodies": bodies})
        floor = _FloorServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=floor.serve_forever, daemon=True)
        thread.start()
        try:
            yield int(floor.server_address[1])
        finally:
            floor.shutdown()
            floor.server_close()
            thread.join(5)


def scrape_figures(
    pool: ProcessPoolExecutor,
    kind: str,
    store: MetricsStore,
    cells: list[tuple[int, bool]],
    seconds: float,
    max_requests: int,
) -> dict[tuple[int, bool], ScrapeFigures]:
    out = {}
    with _serving(kind, store) as port:
        for clients, compressed in cells:
            headers = {"Accept-Encoding": "gzip"} if compressed else {}
            result = pool.submit(
                loadgen.run, "127.0.0.1", port, "/metrics", headers, clients,
                max(max_requests, clients), seconds, clients,
            ).result()  # fmt: skip
            lat = result.latencies
            out[(clients, compressed)] = ScrapeFigures(
                _median(lat), _p99(lat), len(lat) / result.wall, len(lat),
                result.body_bytes / max(len(lat), 1),
            )  # fmt: skip
    return out


def _median(values: list[float]) -> float:
    from bench.report import median

    return median(values)


def _p99(values: list[float]) -> float:
    from bench.report import p99

    return p99(values)


# -- exporter processes: memory and start-up ---------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="utf-8") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


@contextmanager
def exporter_process(
    url: str, interval: float, mode: FetchMode, tmp: Path, status_series: str = "all"
) -> Iterator[tuple[subprocess.Popen[str], int, list[float]]]:
    """``python -m exporter`` against ``url``; yields the process, its port and cycle ends."""
    port = _free_port()
    config = {
        "buddy": {"api_url": url, "fetch_mode": mode.value,
                  "max_concurrency": 8, "request_timeout_seconds": 60,
                  "max_requests_per_second": UNLIMITED_RATE, "burst": 1000},
        "poll": {"interval_seconds": interval, "stale_after_seconds": 3600,
                 "discovery_interval_seconds": 3600},
        "web": {"listen_address": f"127.0.0.1:{port}"},
        "log": {"level": "debug"},
        "metrics": {"status_series": status_series},
        "targets": [{"workspace": "acme"}],
    }  # fmt: skip
    path = tmp / f"exporter-{port}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    env = {**os.environ, "BUDDY_TOKEN": TOKEN}
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "--config.file", str(path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    cycles: list[float] = []

    def count_cycles() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "poll cycle done" in line:
                cycles.append(time.monotonic())

    reader = threading.Thread(target=count_cycles, daemon=True)
    reader.start()
    try:
        yield proc, port, cycles
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.01)


def startup_seconds(actions: int) -> float:
    """Launch of ``python -m exporter`` to the first ``/readyz`` 200."""
    with simulator_process(actions) as url, tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        with exporter_process(url, 3600, FetchMode.AUTO, Path(tmp)) as (proc, port, _):
            _wait(lambda: _ready(port) or proc.poll() is not None, 120, "readyz")
            if proc.poll() is not None:
                raise RuntimeError("the exporter exited during start-up")
            return time.monotonic() - started


def first_cycle_rss(actions: int, per_pipeline: int) -> tuple[float, float]:
    """(RSS in MiB once the first cycle is served, the first text scrape's size in MiB)."""
    with (
        simulator_process(actions, per_pipeline=per_pipeline) as url,
        tempfile.TemporaryDirectory() as tmp,
        exporter_process(url, 3600, FetchMode.LIST, Path(tmp)) as (proc, port, _),
    ):
        _wait(lambda: _ready(port), 300, "readyz")
        _check_exports(port, actions)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=120) as r:
            size = len(r.read()) / 2**20
        return _rss_mib(proc.pid), size


def _check_exports(port: int, actions: int) -> None:
    """Refuse to report the memory of an exporter that is not exporting every action."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=120) as r:
        body = r.read()
    expected = f'buddy_exporter_targets{{kind="action"}} {float(actions)}'.encode()
    if expected not in body:
        raise RuntimeError(f"the exporter does not export {actions} actions")


def soak_rss(
    actions: int, cycles: int, per_pipeline: int, status_series: str
) -> list[tuple[int, float]]:
    """(cycle, RSS MiB) while polling back to back for ``cycles`` cycles."""
    marks = sorted({1, max(1, cycles // 10), cycles // 4, cycles // 2, cycles} - {0})
    # cycle 1 allocates what every later cycle reuses; growth is counted from cycles // 10
    samples: list[tuple[int, float]] = []
    with (
        simulator_process(actions, per_pipeline=per_pipeline) as url,
        tempfile.TemporaryDirectory() as tmp,
        exporter_process(url, 0.1, FetchMode.LIST, Path(tmp), status_series) as (
            proc,
            port,
            done,
        ),
    ):
        _wait(lambda: len(done) >= 1, 300, "the first cycle")
        _check_exports(port, actions)
        for mark in marks:
            _wait(lambda m=mark: len(done) >= m, 600, f"cycle {mark}")  # type: ignore[misc]
            samples.append((len(done), _rss_mib(proc.pid)))
    return samples
