"""The HTTP server under hostile scrapers: idle connections, floods, clients that hang up."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest
from conftest import RunningExporter, config_for, http_get, wait_for

import exporter.server
from exporter.simulator import Simulator

Start = Callable[..., RunningExporter]


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=5)


def test_an_idle_half_sent_request_is_closed_after_the_idle_timeout(
    sim: Simulator, run_exporter: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exporter.server, "IDLE_TIMEOUT_SECONDS", 0.5)
    running = run_exporter(config_for(sim))
    sock = connect(running.url)
    sock.sendall(b"GET /metrics HTTP/1.1\r\n")  # and never the rest
    started = time.monotonic()
    assert sock.recv(100) == b""  # the server closed it
    assert time.monotonic() - started < 4
    sock.close()


def test_a_connection_flood_is_refused_fast_and_serving_goes_on(
    sim: Simulator, run_exporter: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exporter.server, "MAX_CONNECTIONS", 4)
    running = run_exporter(config_for(sim))
    idle = [connect(running.url) for _ in range(4)]
    time.sleep(0.2)  # let the server take them all in
    extra = connect(running.url)
    assert extra.recv(100).startswith(b"HTTP/1.1 503")
    extra.close()
    for sock in idle:
        sock.close()
    wait_for(lambda: http_get(running.url + "/metrics")[0] == 200, timeout=5)


def test_a_scraper_that_hangs_up_mid_response_leaves_no_traceback(
    sim: Simulator, run_exporter: Start, capfd: pytest.CaptureFixture[str]
) -> None:
    for i in range(300, 700):  # a body big enough not to fit one socket buffer
        sim.add_action("acme", "shop", 1, i, f"Step {i}")
    data = config_for(sim)
    running = run_exporter(data)
    for _ in range(20):
        sock = connect(running.url)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.recv(10)
        sock.close()  # with linger 0: a reset while the server is still writing
    assert http_get(running.url + "/metrics")[0] == 200
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
