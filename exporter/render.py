"""Exposition bytes, rendered once per snapshot and per format, then served as they are."""

from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass
from enum import Enum

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from exporter.collector import SnapshotCollector
from exporter.config import StatusSeries
from exporter.snapshot import Snapshot

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


class Format(Enum):
    TEXT = "text"
    OPENMETRICS = "openmetrics"

    @property
    def content_type(self) -> str:
        return OPENMETRICS_CONTENT_TYPE if self is Format.OPENMETRICS else TEXT_CONTENT_TYPE


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


def render(snapshot: Snapshot, options: RenderOptions, fmt: Format) -> bytes:
    """The exposition of ``snapshot`` in ``fmt``, by prometheus_client's own encoders."""
    registry = registry_for(snapshot, options)
    if fmt is Format.OPENMETRICS:
        return bytes(generate_openmetrics(registry))  # type: ignore[no-untyped-call]
    return generate_latest(registry)


class Exposition:
    """One snapshot and its rendered bytes, built at most once per (format, gzip)."""

    def __init__(self, snapshot: Snapshot, options: RenderOptions) -> None:
        self.snapshot = snapshot
        self._options = options
        self._lock = threading.Lock()
        self._bytes: dict[tuple[Format, bool], bytes] = {}

    def get(self, fmt: Format, compressed: bool) -> bytes:
        """The bytes for ``fmt`` (gzip-compressed if asked); rendered on first use."""
        key = (fmt, compressed)
        cached = self._bytes.get(key)
        if cached is not None:
            return cached
        with self._lock:
            if key not in self._bytes:
                plain = self._bytes.get((fmt, False))
                if plain is None:
                    plain = render(self.snapshot, self._options, fmt)
                    self._bytes[(fmt, False)] = plain
                if compressed:
                    self._bytes[key] = gzip.compress(plain, compresslevel=6, mtime=0)
            return self._bytes[key]

    def formats_built(self) -> set[tuple[Format, bool]]:
        with self._lock:
            return set(self._bytes)


class MetricsStore:
    """Holds the current exposition; the poller replaces it, the server reads it."""

    def __init__(self, initial: Snapshot, options: RenderOptions) -> None:
        self.options = options  # replaced on a config reload; used from the next snapshot on
        self._wanted: set[tuple[Format, bool]] = {(Format.TEXT, False)}
        self.current = Exposition(initial, options)

    def get(self, fmt: Format, compressed: bool) -> bytes:
        self._wanted.add((fmt, compressed))
        return self.current.get(fmt, compressed)

    def publish(self, snapshot: Snapshot) -> None:
        """Render the formats asked for so far, then swap them in with one assignment.

        Scrapes meanwhile keep getting the previous complete bytes.
        """
        exposition = Exposition(snapshot, self.options)
        for fmt, compressed in sorted(self._wanted, key=lambda k: (k[0].value, k[1])):
            exposition.get(fmt, compressed)
        self.current = exposition
