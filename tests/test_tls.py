"""TLS towards Buddy (a private CA from ``trustme``) and the standard proxy variables."""

from __future__ import annotations

import logging
import select
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from conftest import TOKEN, RunningExporter, config_for, http_get, value

from exporter.client import ACTION_ENDPOINT
from exporter.config import ConfigError, build_settings
from exporter.simulator import Simulator

Start = Callable[..., RunningExporter]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_sim(ca: trustme.CA, *names: str) -> Simulator:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    sim = Simulator(token=TOKEN, ssl_context=context)
    sim.add_action("acme", "shop", 1, 101, "Build", last_execution_status="SUCCESSFUL")
    sim.add_action("acme", "shop", 1, 102, "Deploy", last_execution_status="FAILED")
    return sim


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "buddy-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def sim_tls(ca: trustme.CA) -> Iterator[Simulator]:
    with tls_sim(ca, "127.0.0.1", "localhost") as sim:
        yield sim


def tls_errors(out: str) -> float:
    return value(out, "buddy_exporter_errors_total", reason="tls") or 0


def test_private_ca_is_accepted_with_ca_file(
    sim_tls: Simulator, ca_file: str, run_exporter: Start
) -> None:
    assert sim_tls.url.startswith("https://")
    out = run_exporter(config_for(sim_tls, buddy={"ca_file": ca_file})).metrics()
    assert value(out, "buddy_up", workspace="acme") == 1
    assert value(out, "buddy_action_poll_success", action_id="101") == 1
    assert tls_errors(out) == 0


def test_private_ca_is_rejected_without_ca_file(
    sim_tls: Simulator, run_exporter: Start, caplog: pytest.LogCaptureFixture
) -> None:
    exporter = run_exporter(config_for(sim_tls))
    out = exporter.metrics()
    assert value(out, "buddy_up", workspace="acme") == 0
    assert tls_errors(out) == 2
    # Not retried: one attempt per target.
    assert (
        value(out, "buddy_exporter_api_requests_total", code="error", endpoint=ACTION_ENDPOINT) == 2
    )
    expected = "certificate verify failed: unable to get local issuer certificate"
    assert any(expected in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    status, _, body = http_get(exporter.url + "/readyz")
    assert status == 200
    assert f"problem: tls: TLS error: {expected}" in body.decode()


def test_hostname_mismatch_is_reported(
    ca: trustme.CA, ca_file: str, run_exporter: Start, caplog: pytest.LogCaptureFixture
) -> None:
    with tls_sim(ca, "buddy.example.com") as sim:
        port = sim.url.rsplit(":", 1)[1]
        data = config_for(sim, buddy={"ca_file": ca_file, "api_url": f"https://localhost:{port}"})
        exporter = run_exporter(data)
        out = exporter.metrics()
    assert tls_errors(out) == 2
    expected = (
        "certificate verify failed: Hostname mismatch, certificate is not valid for 'localhost'"
    )
    assert any(expected in r.getMessage() for r in caplog.records)
    assert expected in http_get(exporter.url + "/readyz")[2].decode()


def test_insecure_skip_verify_connects_and_warns_loudly(
    sim_tls: Simulator, run_exporter: Start, caplog: pytest.LogCaptureFixture
) -> None:
    out = run_exporter(config_for(sim_tls, buddy={"insecure_skip_verify": True})).metrics()
    assert value(out, "buddy_up", workspace="acme") == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "insecure_skip_verify" in m and "NOT verified" in m and sim_tls.url in m for m in warnings
    )


@pytest.mark.parametrize(
    ("buddy", "line"),
    [
        ({"ca_file": "/nonexistent/ca.pem"},
         "buddy.ca_file: cannot load /nonexistent/ca.pem as PEM CA certificates: No such file or directory"),
        ({"ca_file": "{junk}"},
         "buddy.ca_file: cannot load {junk} as PEM CA certificates: no certificate or crl found"),
        ({"ca_file": "{ca}", "insecure_skip_verify": True},
         "buddy: ca_file and insecure_skip_verify exclude each other"),
    ],
    ids=["missing", "not-pem", "both"],
)  # fmt: skip
def test_bad_tls_config_is_one_clear_line(
    buddy: dict[str, Any], line: str, ca_file: str, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    paths = {"junk": str(junk), "ca": ca_file}
    buddy = {k: v.format(**paths) if isinstance(v, str) else v for k, v in buddy.items()}
    data = {
        "buddy": buddy,
        "targets": [{"workspace": "a", "project": "b", "pipeline_id": 1, "action_id": 2}],
    }
    with pytest.raises(ConfigError) as info:
        build_settings(data)
    assert info.value.lines == [line.format(**paths)]


# -- proxies ---------------------------------------------------------------------------


class ConnectProxy(socketserver.ThreadingTCPServer):
    """A minimal HTTPS proxy: answers ``CONNECT host:port`` and pipes bytes to 127.0.0.1."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ConnectHandler)
        self.tunnels: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ConnectHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.request.recv(4096)
            if not chunk:
                return
            head += chunk
        method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
        assert isinstance(self.server, ConnectProxy)
        self.server.tunnels.append(f"{method} {target}")
        port = int(target.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as upstream:
            self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            sockets = [self.request, upstream]
            while True:
                readable, _, _ = select.select(sockets, [], [], 5)
                if not readable:
                    return
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (upstream if sock is self.request else self.request).sendall(data)


@pytest.fixture
def connect_proxy() -> Iterator[ConnectProxy]:
    proxy = ConnectProxy()
    thread = threading.Thread(
        target=proxy.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
    )
    thread.start()
    yield proxy
    proxy.shutdown()
    proxy.server_close()


def test_https_proxy_is_used_for_a_name_only_the_proxy_can_reach(
    ca: trustme.CA, ca_file: str, connect_proxy: ConnectProxy, run_exporter: Start,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # buddy.internal does not resolve here; only the proxy knows where it is.
    with tls_sim(ca, "buddy.internal") as sim:
        port = sim.url.rsplit(":", 1)[1]
        monkeypatch.setenv("HTTPS_PROXY", connect_proxy.url)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # the test's own requests
        data = config_for(
            sim, buddy={"api_url": f"https://buddy.internal:{port}", "ca_file": ca_file}
        )
        out = run_exporter(data).metrics()
    assert value(out, "buddy_up", workspace="acme") == 1
    assert connect_proxy.tunnels and all(
        t == f"CONNECT buddy.internal:{port}" for t in connect_proxy.tunnels
    )


def test_no_proxy_bypasses_the_proxy(
    ca: trustme.CA, ca_file: str, connect_proxy: ConnectProxy, run_exporter: Start,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    with tls_sim(ca, "localhost") as sim:
        port = sim.url.rsplit(":", 1)[1]
        monkeypatch.setenv("HTTPS_PROXY", connect_proxy.url)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        data = config_for(sim, buddy={"api_url": f"https://localhost:{port}", "ca_file": ca_file})
        out = run_exporter(data).metrics()
    assert value(out, "buddy_up", workspace="acme") == 1
    assert connect_proxy.tunnels == []
