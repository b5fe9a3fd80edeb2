"""Serving pre-rendered bytes: equal to a fresh render, never half-built, built ahead."""

from __future__ import annotations

import gzip
import http.client
import threading
from collections.abc import Iterable, Iterator

import pytest
from conftest import http_get
from prometheus_client import ProcessCollector
from prometheus_client.metrics_core import Metric

import exporter.render as render_module
from exporter.render import Exposition, Format, MetricsStore, RenderOptions, render
from exporter.server import Health, MetricsServer
from exporter.snapshot import ActionKey, ActionRecord, ActionValues, Snapshot

OPTIONS = RenderOptions(60)
ACCEPT = {
    Format.TEXT: "text/plain;version=0.0.4",
    Format.OPENMETRICS: "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
}
EVERY_FORM = [(fmt, compressed) for fmt in Format for compressed in (False, True)]


def snapshot(status: str, actions: int = 5) -> Snapshot:
    values = ActionValues(status, "BUILD", "ON_EVERY_EXECUTION", "WAIT_ON_SUCCESS",
                          "https://app.buddy.works/x", 1.0, 0.0, 600.0, False, False)  # fmt: skip
    records = tuple(
        ActionRecord(ActionKey("acme", "shop", 1, i), "Deploy", f"Action {i}", values, True, 1.5)
        for i in range(1, actions + 1)
    )
    return Snapshot(actions=records, completed=True, poll_duration=0.25, last_poll=1.5)


class FrozenProcessCollector(ProcessCollector):
    """The real process families, sampled once, so two renders can be compared byte for byte."""

    frozen: list[Metric] | None = None

    def collect(self) -> Iterable[Metric]:
        if FrozenProcessCollector.frozen is None:
            FrozenProcessCollector.frozen = list(super().collect())
        return FrozenProcessCollector.frozen


@pytest.fixture(autouse=True)
def frozen_process_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(render_module, "ProcessCollector", FrozenProcessCollector)


class Served(MetricsStore):
    """A store behind a real HTTP server."""

    url = ""


@pytest.fixture
def serve() -> Iterator[Served]:
    store = Served(snapshot("SUCCESSFUL"), OPTIONS)
    server = MetricsServer(
        "127.0.0.1:0", store, Health(lambda: True, lambda: (True, "ready")), lambda: "test"
    )
    server.start()
    store.url = f"http://127.0.0.1:{server.port}/metrics"
    yield store
    server.stop()


def scrape(store: Served, fmt: Format, compressed: bool) -> bytes:
    headers = {"Accept": ACCEPT[fmt]}
    if compressed:
        headers["Accept-Encoding"] = "gzip"
    status, got, body = http_get(store.url, headers)
    assert status == 200
    assert got["Content-Type"] == fmt.content_type
    assert (got.get("Content-Encoding") == "gzip") is compressed
    assert int(got["Content-Length"]) == len(body)
    return gzip.decompress(body) if compressed else body


@pytest.mark.parametrize(("fmt", "compressed"), EVERY_FORM)
def test_served_bytes_equal_a_fresh_render_of_the_same_snapshot(
    serve: Served, fmt: Format, compressed: bool
) -> None:
    snap = snapshot("FAILED")
    serve.publish(snap)
    assert scrape(serve, fmt, compressed) == render(snap, OPTIONS, fmt)
    serve.publish(snap)  # now built ahead rather than on first use
    assert (fmt, compressed) in serve.current.formats_built()
    assert scrape(serve, fmt, compressed) == render(snap, OPTIONS, fmt)


def test_gzip_forms_decompress_to_the_plain_forms() -> None:
    exposition = Exposition(snapshot("FAILED"), OPTIONS)
    exposition.build(EVERY_FORM)
    for fmt in Format:
        assert gzip.decompress(exposition.get(fmt, True)) == exposition.get(fmt, False)


def test_a_form_asked_later_matches_the_forms_already_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Real, moving process metrics: a form derived later must still equal its sibling.
    monkeypatch.setattr(render_module, "ProcessCollector", ProcessCollector)
    exposition = Exposition(snapshot("FAILED"), OPTIONS)
    exposition.build([(Format.TEXT, True)])
    assert gzip.decompress(exposition.get(Format.TEXT, True)) == exposition.get(Format.TEXT, False)
    plain = exposition.get(Format.OPENMETRICS, False)
    assert gzip.decompress(exposition.get(Format.OPENMETRICS, True)) == plain


def test_a_scrape_during_a_render_gets_the_previous_complete_bytes(
    serve: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = snapshot("SUCCESSFUL"), snapshot("FAILED")
    serve.publish(old)
    for fmt, compressed in EVERY_FORM:
        scrape(serve, fmt, compressed)  # ask for every form, so each is built ahead
    previous = {key: scrape(serve, *key) for key in EVERY_FORM}

    rendering, release = threading.Event(), threading.Event()
    real_families_of = render_module.families_of

    def slow_families_of(snap: Snapshot, options: RenderOptions) -> list[Metric]:
        if snap is new:
            rendering.set()
            assert release.wait(10)
        return real_families_of(snap, options)

    monkeypatch.setattr(render_module, "families_of", slow_families_of)
    publisher = threading.Thread(target=serve.publish, args=(new,))
    publisher.start()
    try:
        assert rendering.wait(10)
        for key in EVERY_FORM:
            assert scrape(serve, *key) == previous[key]
    finally:
        release.set()
        publisher.join(10)
    for fmt, compressed in EVERY_FORM:
        assert scrape(serve, fmt, compressed) == render(new, OPTIONS, fmt)
        assert scrape(serve, fmt, compressed) != previous[(fmt, compressed)]


def test_only_forms_asked_for_lately_are_built_ahead() -> None:
    now = [1000.0]
    store = MetricsStore(snapshot("SUCCESSFUL"), OPTIONS, clock=lambda: now[0])
    store.publish(snapshot("FAILED"))
    assert store.current.formats_built() == {(Format.TEXT, False)}  # nobody asked yet

    store.get(Format.OPENMETRICS, True)
    store.publish(snapshot("FAILED"))
    # A plain form that only feeds its gzip form is not kept.
    assert store.current.formats_built() == {(Format.OPENMETRICS, True)}

    now[0] += 3600
    store.publish(snapshot("FAILED"))
    assert store.current.formats_built() == {(Format.TEXT, False)}


def test_keep_alive_serves_several_scrapes_on_one_connection(serve: Served) -> None:
    host, port = serve.url.split("//")[1].split("/")[0].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        bodies = []
        for _ in range(3):
            connection.request("GET", "/metrics")
            response = connection.getresponse()
            bodies.append(response.read())
            assert response.status == 200
        assert connection.sock is not None  # still the same, open socket
        assert bodies[0] == bodies[1] == bodies[2]
    finally:
        connection.close()
