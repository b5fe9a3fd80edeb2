"""Exposition bytes, rendered once per snapshot and per format, then served as they are.

A scrape never renders: it gets the bytes of the current snapshot, built when the
snapshot was published. The formats built are the ones scrapers asked for lately
(text or OpenMetrics, plain or gzip); a format asked for the first time is
rendered once for the current snapshot and built ahead from then on.
"""

from __future__ import annotations

import contextlib
import gc
import gzip
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import Enum

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.metrics_core import Metric

from exporter.collector import SnapshotCollector
from exporter.config import StatusSeries
from exporter.exposition import Encoder
from exporter.snapshot import Snapshot

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
GZIP_LEVEL = 6
#: A format nobody asked for in this long (or three poll intervals) is no longer built ahead.
RETAIN_SECONDS = 600.0


class Format(Enum):
    TEXT = "text"
    OPENMETRICS = "openmetrics"

    @property
    def content_type(self) -> str:
        return OPENMETRICS_CONTENT_TYPE if self is Format.OPENMETRICS else TEXT_CONTENT_TYPE


Key = tuple[Format, bool]  # (format, gzip-compressed)


@dataclass(frozen=True, slots=True)
class RenderOptions:
    interval_seconds: float
    status_series: StatusSeries = StatusSeries.ALL


def registry_for(snapshot: Snapshot, options: RenderOptions) -> CollectorRegistry:
    """A private registry holding the snapshot's families and the process metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        SnapshotCollector(
            snapshot,
            interval_seconds=options.interval_seconds,
            status_series=options.status_series,
        )
    )
    ProcessCollector(registry=registry)
    return registry


def families_of(snapshot: Snapshot, options: RenderOptions) -> list[Metric]:
    """Every family ``/metrics`` shows for ``snapshot``, process metrics sampled now."""
    return list(registry_for(snapshot, options).collect())


def encode(families: Iterable[Metric], fmt: Format, encoder: Encoder | None = None) -> bytes:
    """``families`` in ``fmt``; equal to prometheus_client's ``generate_latest`` output."""
    encoder = encoder or Encoder()
    return encoder.openmetrics(families) if fmt is Format.OPENMETRICS else encoder.text(families)


def render(snapshot: Snapshot, options: RenderOptions, fmt: Format) -> bytes:
    """The exposition of ``snapshot`` in ``fmt``."""
    return encode(families_of(snapshot, options), fmt)


def compress(plain: bytes) -> bytes:
    """Deterministic gzip (no timestamp), so equal bytes compress to equal bytes."""
    return gzip.compress(plain, compresslevel=GZIP_LEVEL, mtime=0)


@contextlib.contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a render allocates.

    A render creates a few objects per series (200,000 series: about a million), none
    of them in a reference cycle, all freed by reference counting when it ends. Left
    on, the collector runs full passes over the whole heap in the middle of it, which
    doubles the time of collecting the families (measured in ``bench/``).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class Exposition:
    """One snapshot and its rendered bytes, each (format, gzip) built at most once."""

    def __init__(self, snapshot: Snapshot, options: RenderOptions) -> None:
        self.snapshot = snapshot
        self._options = options
        self._lock = threading.Lock()
        self._bytes: dict[Key, bytes] = {}

    def build(self, keys: Iterable[Key]) -> None:
        """Render ``keys`` from one collection of the families (one process-metrics sample).

        A plain form that only feeds its gzip form is not kept.
        """
        wanted = set(keys)
        with self._lock, cyclic_gc_paused():
            missing = wanted - set(self._bytes)
            if not missing:
                return
            families: list[Metric] | None = None
            encoder = Encoder()
            for fmt in sorted({f for f, _ in missing}, key=lambda f: f.value):
                # The forms of one format always hold the same bytes: derive a missing
                # form from the other one rather than sample the process metrics again.
                plain = self._bytes.get((fmt, False))
                if plain is None and (fmt, True) in self._bytes:
                    plain = gzip.decompress(self._bytes[(fmt, True)])
                if plain is None:
                    if families is None:
                        families = families_of(self.snapshot, self._options)
                    plain = encode(families, fmt, encoder)
                if (fmt, True) in missing:
                    self._bytes[(fmt, True)] = compress(plain)
                if (fmt, False) in missing:
                    self._bytes[(fmt, False)] = plain

    def get(self, fmt: Format, compressed: bool) -> bytes:
        """The bytes for ``fmt`` (gzip-compressed if asked); rendered on first use."""
        key = (fmt, compressed)
        cached = self._bytes.get(key)
        if cached is None:
            self.build([key])
            cached = self._bytes[key]
        return cached

    def formats_built(self) -> set[Key]:
        with self._lock:
            return set(self._bytes)


class MetricsStore:
    """Holds the current exposition; the poller replaces it, the server reads it."""

    def __init__(
        self,
        initial: Snapshot,
        options: RenderOptions,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.options = options  # replaced on a config reload; used from the next snapshot on
        self._clock = clock
        self._asked: dict[Key, float] = {}
        self.current = Exposition(initial, options)

    def get(self, fmt: Format, compressed: bool) -> bytes:
        self._asked[(fmt, compressed)] = self._clock()
        return self.current.get(fmt, compressed)

    def wanted(self) -> set[Key]:
        """The forms to build ahead: those asked for lately, else plain text."""
        now = self._clock()
        retain = max(RETAIN_SECONDS, 3 * self.options.interval_seconds)
        recent = {k for k, t in list(self._asked.items()) if now - t <= retain}
        return recent or {(Format.TEXT, False)}

    def publish(self, snapshot: Snapshot) -> None:
        """Render the forms asked for lately, then swap them in with one assignment.

        Scrapes meanwhile keep getting the previous complete bytes.
        """
        exposition = Exposition(snapshot, self.options)
        exposition.build(self.wanted())
        self.current = exposition
