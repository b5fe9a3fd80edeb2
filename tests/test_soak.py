"""Soak: many poll cycles against a simulator failing 30 % of requests at random.

Samples the number of exposed series, the RSS of this process (exporter and
simulator both live in it) and its thread count. The long run is marked
``soak`` (``.venv/bin/python -m pytest -m soak -s``; ``SOAK_SECONDS`` sets its
length after warm-up, default 240); a few seconds of it run in the default suite.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from conftest import TOKEN, RunningExporter, config_for, find, samples

from exporter.simulator import Fault, Simulator

Start = Callable[..., RunningExporter]
FAILURE_RATE = 0.3


def fault_mix() -> list[Fault]:
    """Faults that together hit ``FAILURE_RATE`` of requests (each is tried in turn).

    The slow one (past the timeout) is rarer, or it alone would set the pace of
    every cycle. Not in the mix: 401/403, whose workspace cooldown (60 s and up)
    would turn the run into a test of waiting, and 429 with a long stop.
    """
    weighted = [
        (1.0, Fault(status=500)),
        (1.0, Fault(status=502, body="<html>Bad gateway</html>", content_type="text/html")),
        (1.0, Fault(status=503, body="")),
        (1.0, Fault(drop=True)),
        (1.0, Fault(status=200, truncate=True)),
        (1.0, Fault(status=200, body='{"id": 1, "name": "cut')),
        (1.0, Fault(status=200, body="<html>login</html>", content_type="text/html")),
        (1.0, Fault(status=404)),
        (0.3, Fault(status=429, headers={"Retry-After": "0"})),
        (0.1, Fault(delay=0.25, passthrough=True)),  # past request_timeout_seconds
    ]
    low, high = 0.0, 1.0
    for _ in range(60):  # bisect the scale that makes the total FAILURE_RATE
        scale = (low + high) / 2
        for weight, fault in weighted:
            fault.probability = weight * scale
        if failure_share([f for _, f in weighted]) < FAILURE_RATE:
            low = scale
        else:
            high = scale
    return [f for _, f in weighted]


def failure_share(kinds: list[Fault]) -> float:
    """The share of requests that get one of ``kinds`` (each is tried in turn)."""
    passed = 1.0
    for fault in kinds:
        passed *= 1 - fault.probability
    return 1 - passed


def rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def os_threads() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError("no Threads in /proc/self/status")


class CountingHandler(logging.Handler):
    """Formats every record (tracebacks included) and keeps only counts, so memory stays flat."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.levels: Counter[str] = Counter()
        self.unexpected: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        self.levels[record.levelname] += 1
        if record.levelno >= logging.ERROR and len(self.unexpected) < 5:
            self.unexpected.append(text)


@contextlib.contextmanager
def counted_logs() -> Iterator[CountingHandler]:
    """Route the exporter's logs to a counter instead of pytest's (growing) capture."""
    handler = CountingHandler()
    logger = logging.getLogger("exporter")
    saved = (logger.propagate, logger.level)
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.propagate, logger.level = saved


@dataclass
class Sample:
    cycle: int
    seconds: float
    series: int
    rss_kib: int
    threads: int


@dataclass
class SoakResult:
    samples: list[Sample] = field(default_factory=list)
    cycles: int = 0
    requests: int = 0
    errors: float = 0.0
    logs: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)


def soak(run_exporter: Start, seconds: float, warmup_cycles: int, sample_every: int) -> SoakResult:
    sim = Simulator(token=TOKEN)
    sim.rate_limit = 10**12  # the simulated quota must not pace this run
    sim.seed_generated("acme", projects=2, pipelines=1, actions=3)  # 6 actions
    result = SoakResult()
    with sim, counted_logs() as logs:
        data = config_for(
            sim,
            buddy={"request_timeout_seconds": 0.2, "max_retries": 2, "retry_backoff_seconds": 0.005,
                   "max_requests_per_second": 5000, "burst": 200},
        )  # fmt: skip
        exporter = run_exporter(data)
        faults = fault_mix()
        assert abs(failure_share(faults) - FAILURE_RATE) < 1e-6
        for fault in faults:
            sim.add_fault(fault)
        started = time.monotonic()
        measured_from: float | None = None
        cycle = 0
        while True:
            exporter.poll()
            cycle += 1
            if cycle % sample_every == 0 or cycle == warmup_cycles:
                with sim.lock:
                    result.requests += len(sim.requests)
                    sim.requests.clear()
                out = exporter.metrics()
                result.samples.append(
                    Sample(
                        cycle,
                        time.monotonic() - started,
                        len(samples(out)),
                        rss_kib(),
                        os_threads(),
                    )
                )
                if cycle == warmup_cycles:
                    measured_from = time.monotonic()
                if measured_from is not None and time.monotonic() - measured_from >= seconds:
                    break
        result.cycles = cycle
        result.errors = sum(v for _, v in find(out, "buddy_exporter_errors_total"))
        result.logs = logs.levels
        result.unexpected = logs.unexpected
        assert threading.main_thread().is_alive()
    return result


def report(result: SoakResult, warmup_cycles: int) -> str:
    base = next(s for s in result.samples if s.cycle >= warmup_cycles)
    end = result.samples[-1]
    series = [s.series for s in result.samples if s.cycle >= warmup_cycles]
    return (
        f"soak: {end.seconds:.0f}s, {result.cycles} cycles, {result.requests} requests, "
        f"{result.errors:.0f} errors survived; RSS {result.samples[0].rss_kib / 1024:.1f} MiB "
        f"at start, {base.rss_kib / 1024:.1f} MiB after {warmup_cycles} warm-up cycles, "
        f"{end.rss_kib / 1024:.1f} MiB at the end; threads {base.threads} -> {end.threads}; "
        f"series {min(series)}..{max(series)}; log lines {dict(result.logs)}"
    )


def check_flat(result: SoakResult, warmup_cycles: int, rss_growth_mib: float) -> None:
    base = next(s for s in result.samples if s.cycle >= warmup_cycles)
    end = result.samples[-1]
    assert result.unexpected == [], result.unexpected  # no "poll cycle failed unexpectedly"
    assert result.errors > 0  # the faults really happened
    assert (end.rss_kib - base.rss_kib) / 1024 < rss_growth_mib, report(result, warmup_cycles)
    assert end.threads <= base.threads + 2, report(result, warmup_cycles)
    # Series never pile up: at most every action's series plus a bounded set of self-metrics.
    series = [s.series for s in result.samples if s.cycle >= warmup_cycles]
    assert max(series) <= base.series * 1.2, report(result, warmup_cycles)


def test_short_soak_keeps_memory_threads_and_series_flat(run_exporter: Start) -> None:
    result = soak(run_exporter, seconds=4, warmup_cycles=30, sample_every=10)
    print("\n" + report(result, 30))
    assert result.cycles >= 60
    check_flat(result, warmup_cycles=30, rss_growth_mib=12)


@pytest.mark.soak
def test_soak_thousands_of_cycles_with_30_percent_failures(run_exporter: Start) -> None:
    seconds = float(os.environ.get("SOAK_SECONDS", "240"))
    result = soak(run_exporter, seconds=seconds, warmup_cycles=200, sample_every=100)
    print("\n" + report(result, 200))
    for s in result.samples[:: max(len(result.samples) // 10, 1)]:
        print(f"  cycle {s.cycle:6d} t={s.seconds:6.1f}s series={s.series} "
              f"rss={s.rss_kib / 1024:.1f}MiB threads={s.threads}")  # fmt: skip
    assert result.cycles >= 1000
    check_flat(result, warmup_cycles=200, rss_growth_mib=16)
