"""The HTTP server: ``/metrics``, ``/healthz``, ``/readyz`` and a landing page.

It runs in its own threads and only reads the current exposition, so a scrape
never waits for a poll and never calls Buddy.
"""

from __future__ import annotations

import contextlib
import html
import logging
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from exporter import __version__
from exporter.render import Format, MetricsStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Health:
    """What the probes ask: is the poll loop alive, and has the first cycle finished."""

    live: Callable[[], bool]
    ready: Callable[[], tuple[bool, str]]


def wants_openmetrics(accept: str) -> bool:
    return any(
        part.split(";")[0].strip().lower() == "application/openmetrics-text"
        for part in accept.split(",")
    )


def wants_gzip(accept_encoding: str) -> bool:
    for part in accept_encoding.split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            q = params.strip().removeprefix("q=")
            return not (params and q.replace(".", "").strip("0") == "")
    return False


LANDING = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Buddy.works exporter</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:50em}}code{{background:#eee}}</style>
</head><body>
<h1>Buddy.works exporter</h1>
<p>Version {version}. Polls the Buddy.works API in the background and serves the
state of pipeline actions for Prometheus.</p>
<ul>
<li><a href="metrics">/metrics</a> &ndash; the metrics</li>
<li><a href="healthz">/healthz</a> &ndash; liveness</li>
<li><a href="readyz">/readyz</a> &ndash; readiness (after the first poll cycle)</li>
</ul>
<p>{summary}</p>
</body></html>
"""


#: Seconds a connection may sit idle (or send its request slowly) before it is closed.
IDLE_TIMEOUT_SECONDS = 30.0
#: Connections served at once; more are answered 503 at once instead of piling up threads.
MAX_CONNECTIONS = 64

_BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def make_handler(
    store: MetricsStore, health: Health, summary: Callable[[], str]
) -> type[BaseHTTPRequestHandler]:
    def landing() -> bytes:
        # Built per request (it is tiny), so a reloaded config shows at once.
        return LANDING.format(
            version=html.escape(__version__), summary=html.escape(summary())
        ).encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out as two writes; with Nagle's algorithm a small body
        # would wait for the client's delayed ACK (40 ms on Linux) on every scrape.
        disable_nagle_algorithm = True
        # An idle or half-sent connection is closed after this, so it cannot hold a thread.
        timeout = IDLE_TIMEOUT_SECONDS
        server_version = f"buddy-exporter/{__version__}"
        sys_version = ""

        def do_GET(self) -> None:
            self._route(send_body=True)

        def do_HEAD(self) -> None:
            self._route(send_body=False)

        def _route(self, send_body: bool) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._metrics(send_body)
            elif path == "/healthz":
                ok = health.live()
                self._send(
                    200 if ok else 503,
                    b"ok\n" if ok else b"poll loop not running\n",
                    "text/plain; charset=utf-8",
                    send_body,
                )
            elif path == "/readyz":
                ok, message = health.ready()
                self._send(
                    200 if ok else 503,
                    (message + "\n").encode(),
                    "text/plain; charset=utf-8",
                    send_body,
                )
            elif path == "/":
                self._send(200, landing(), "text/html; charset=utf-8", send_body)
            else:
                self._send(404, b"not found\n", "text/plain; charset=utf-8", send_body)

        def _metrics(self, send_body: bool) -> None:
            fmt = (
                Format.OPENMETRICS
                if wants_openmetrics(self.headers.get("Accept", ""))
                else Format.TEXT
            )
            compressed = wants_gzip(self.headers.get("Accept-Encoding", ""))
            body = store.get(fmt, compressed)
            extra = {"Content-Encoding": "gzip"} if compressed else {}
            self._send(200, body, fmt.content_type, send_body, extra)

        def _send(
            self,
            status: int,
            body: bytes,
            content_type: str,
            send_body: bool,
            extra: dict[str, str] | None = None,
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Vary", "Accept, Accept-Encoding")
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("%s %s", self.address_string(), format % args)

    return Handler


def parse_listen_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.debug("too many connections: refusing %s", client_address)
            with contextlib.suppress(OSError):
                request.sendall(_BUSY)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: object, client_address: object) -> None:
        # A scraper that hangs up mid-response, or goes quiet, is its business,
        # not a traceback on stderr.
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            log.debug("client %s went away", client_address)
            return
        log.exception("error while serving %s", client_address)


class MetricsServer:
    """Serves HTTP from a background thread; ``start()`` binds, ``stop()`` closes."""

    def __init__(
        self, address: str, store: MetricsStore, health: Health, summary: Callable[[], str]
    ) -> None:
        self._server = _Server(parse_listen_address(address), make_handler(store, health, summary))
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            name="http",
            kwargs={"poll_interval": 0.2},
            daemon=True,
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
