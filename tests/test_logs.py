"""The log format: secrets removed, control characters escaped."""

from __future__ import annotations

import logging

from exporter.logs import RedactingFormatter, redact


def line(message: str, *args: object, exc: BaseException | None = None) -> str:
    record = logging.LogRecord("exporter.test", logging.WARNING, __file__, 1, message, args,
                               (type(exc), exc, exc.__traceback__) if exc else None)  # fmt: skip
    return RedactingFormatter("level=%(levelname)s msg=%(message)s").format(record)


def test_secrets_and_their_url_encoded_forms_are_removed() -> None:
    redact("tok-3f9a/1c77+secret")
    out = line(
        "echo %s and %s and %s",
        "tok-3f9a/1c77+secret",
        "tok-3f9a%2F1c77%2Bsecret",
        "tok-3f9a%2F1c77%2Bsecret",
    )
    assert "3f9a" not in out and out.count("<redacted>") == 3


def test_secrets_in_tracebacks_are_removed() -> None:
    redact("trace-secret-0042")
    try:
        raise RuntimeError("boom trace-secret-0042")
    except RuntimeError as exc:
        out = line("failed", exc=exc)
    assert "Traceback" in out and "trace-secret-0042" not in out


def test_a_newline_from_outside_cannot_forge_a_log_line() -> None:
    out = line("HTTP 500: %s", "boom\nts=2026-01-01 level=INFO msg=all good\r")
    assert "\n" not in out and "\r" not in out
    assert out == "level=WARNING msg=HTTP 500: boom\\nts=2026-01-01 level=INFO msg=all good\\r"
