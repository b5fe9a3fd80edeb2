"""Logging: ``key=value`` lines on stderr, with every known secret taken out."""

from __future__ import annotations

import logging
import re
import sys
import threading
from urllib.parse import quote, quote_plus

_secrets: set[str] = set()
_lock = threading.Lock()


def redact(secret: str) -> None:
    """Never let ``secret`` appear in a log line from now on (tracebacks included).

    Its URL-encoded forms are taken out too: an error page may echo a request back.
    """
    if secret:
        with _lock:
            _secrets.update({secret, quote(secret, safe=""), quote_plus(secret)})


def scrub(text: str) -> str:
    """``text`` with every registered secret replaced."""
    for secret in tuple(_secrets):
        if secret in text:
            text = text.replace(secret, "<redacted>")
    return text


_ESCAPE = re.compile(r'[\x00-\x1f\x7f"\\]')


def _escaped(char: str) -> str:
    return "\\" + char if char in '"\\' else repr(char)[1:-1]


class RedactingFormatter(logging.Formatter):
    """Formats a record, then removes the secrets from the final text.

    The message is a logfmt value: quotes, backslashes and control characters are
    escaped, so text from Buddy (an error message with a newline) cannot forge a
    log line of its own.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = _ESCAPE.sub(lambda m: _escaped(m.group()), record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        RedactingFormatter(
            'ts=%(asctime)s level=%(levelname)s logger=%(name)s msg="%(message)s"',
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
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # Its "skipped: maximum number of running instances" duplicates the poller's own warning
    # about a long cycle; job errors are still logged at error level.
    logging.getLogger("apscheduler").setLevel(max(logging.ERROR, root.level))
