"""A scrape load generator that runs in its own process, over raw keep-alive sockets.

Each client is a thread with one connection, sending a request as soon as the
previous response is read in full; a server that closes after each response
(HTTP/1.0, as prometheus_client's stock server does) is reconnected, and the
connect time counts in the latency, as it would for Prometheus.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from dataclasses import dataclass

_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
_CLOSE = re.compile(rb"\r\nconnection:\s*close", re.IGNORECASE)


@dataclass(frozen=True)
class LoadResult:
    latencies: list[float]
    wall: float
    body_bytes: int
    connections: int


def _read_response(sock: socket.socket, buf: bytearray) -> tuple[int, bool]:
    """Read one response; returns (body length, whether the server closes)."""
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response headers")
        head += chunk
    head, _, rest = head.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"unexpected response: {head[:80]!r}")
    closes = head.startswith(b"HTTP/1.0") or _CLOSE.search(head) is not None
    match = _LENGTH.search(head)
    view = memoryview(buf)
    if match is None:  # until the server closes
        total = len(rest)
        while n := sock.recv_into(view):
            total += n
        return total, True
    length = int(match.group(1))
    remaining = length - len(rest)
    while remaining > 0:
        n = sock.recv_into(view, min(len(buf), remaining))
        if n == 0:
            raise ConnectionError("closed in the middle of a body")
        remaining -= n
    return length, closes


def run(
    host: str,
    port: int,
    path: str,
    headers: dict[str, str],
    clients: int,
    max_requests: int,
    max_seconds: float,
    min_requests: int,
) -> LoadResult:
    """Scrape with ``clients`` connections until ``max_requests`` or ``max_seconds``.

    At least ``min_requests`` are made whatever the time, so slow servers still get a figure.
    """
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        + "\r\n"
    ).encode()
    lock = threading.Lock()
    latencies: list[float] = []
    totals = {"bytes": 0, "connections": 0, "issued": 0}
    errors: list[BaseException] = []
    started = time.perf_counter()
    deadline = started + max_seconds

    def take() -> bool:
        with lock:
            issued = totals["issued"]
            if issued >= max_requests or (
                issued >= min_requests and time.perf_counter() > deadline
            ):
                return False
            totals["issued"] = issued + 1
            return True

    def client() -> None:
        buf = bytearray(1 << 20)
        sock: socket.socket | None = None
        try:
            while take():
                t0 = time.perf_counter()
                if sock is None:
                    sock = socket.create_connection((host, port))
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    with lock:
                        totals["connections"] += 1
                sock.sendall(request)
                length, closes = _read_response(sock, buf)
                elapsed = time.perf_counter() - t0
                with lock:
                    latencies.append(elapsed)
                    totals["bytes"] += length
                if closes:
                    sock.close()
                    sock = None
        except BaseException as exc:  # reported to the parent, never swallowed
            errors.append(exc)
        finally:
            if sock is not None:
                sock.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if errors:
        raise errors[0]
    return LoadResult(sorted(latencies), wall, totals["bytes"], totals["connections"])
