"""Logging: ``key=value`` lines on stderr, with every known secret taken out."""

from __future__ import annotations

import logging
import sys
import threading

_secrets: set[str] = set()
_lock = threading.Lock()


def redact(secret: str) -> None:
    """Never let ``secret`` appear in a log line from now on (tracebacks included)."""
    if secret:
        with _lock:
            _secrets.add(secret)


def scrub(text: str) -> str:
    """``text`` with every registered secret replaced."""
    for secret in tuple(_secrets):
        if secret in text:
            text = text.replace(secret, "<redacted>")
    return text


class RedactingFormatter(logging.Formatter):
    """Formats a record, then removes the secrets from the final text."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        RedactingFormatter(
            "ts=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)s",
            datefmt="%Y-%m-%dT%H:%M:%S%z",
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_level(level)


def set_level(level: str) -> None:
    root = logging.getLogger()
    root.setLevel(level.upper())
    # Per-request lines from libraries are noise at info level.
    for noisy in ("httpx", "httpcore", "apscheduler"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
