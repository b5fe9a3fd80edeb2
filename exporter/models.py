"""The Buddy API objects, as far as the metrics need them.

Parsing is lenient by design: unknown fields are ignored, unknown enum strings
are kept, nulls are allowed, and a field of the wrong type becomes ``None``
(recorded as a problem) instead of failing the whole object. Only an object
without a usable ``id`` is rejected.
"""

from __future__ import annotations

import math
import re
from typing import Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
)

from exporter.logs import scrub

#: The documented values of ``last_execution_status`` (the seed page's enum).
KNOWN_STATUSES: tuple[str, ...] = (
    "INPROGRESS",
    "ENQUEUED",
    "TERMINATED",
    "SUCCESSFUL",
    "FAILED",
    "INITIAL",
    "NOT_EXECUTED",
    "SKIPPED",
    "TERMINATING",
    "WAITING_FOR_APPLY",
    "WAITING_FOR_VARIABLES",
    "WAITING_FOR_SETTABLE_VARIABLES",
    "WAITING_FOR_VT_SESSION",
)
_IDENTIFIER = re.compile(r"[A-Z][A-Z0-9_]*")


def normalize_status(raw: str | None) -> str | None:
    """Upper-case and trim a status; anything not a plain identifier is ``OTHER``."""
    if raw is None:
        return None
    value = raw.strip()
    if not value.isascii():  # str.upper() folds some non-ASCII letters into ASCII ones
        return "OTHER"
    value = value.upper()
    return value if _IDENTIFIER.fullmatch(value) else "OTHER"


class InvalidObject(ValueError):
    """An API object that cannot be used at all (e.g. no id)."""


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    @field_validator("*", mode="wrap")
    @classmethod
    def _drop_bad_field(
        cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> Any:
        name = info.field_name or ""
        try:
            return handler(_clean(name, value))
        except (ValidationError, ValueError) as exc:
            if name in cls._required_fields:
                raise
            problems = info.context.get("problems") if isinstance(info.context, dict) else None
            if problems is not None:
                if isinstance(exc, ValidationError):
                    msg = exc.errors(include_url=False)[0]["msg"]
                else:
                    msg = str(exc)
                problems.append(f"{name}: {msg} (got {_short(value)})")
            return None

    _required_fields: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def parse(cls, data: Any, problems: list[str] | None = None) -> Any:
        """Validate ``data``; field problems are appended to ``problems``."""
        if not isinstance(data, dict):
            raise InvalidObject(f"expected a JSON object, got {type(data).__name__}")
        try:
            return cls.model_validate(
                data, context={"problems": problems if problems is not None else []}
            )
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise InvalidObject(f"{loc}: {first['msg']}") from None


def _short(value: Any) -> str:
    # Scrub before cutting: a cut through a secret would hide it from the log filter.
    text = scrub(repr(value))
    return text if len(text) <= 60 else text[:57] + "..."


#: Fields that hold numbers: true/false there is not a number, and NaN/Infinity are no value.
_NUMBER_FIELDS = frozenset({"id", "timeout", "retry_count", "retry_interval"})


def _clean(field: str, value: Any) -> Any:
    """Reject what JSON allows but no metric should carry; mend strings that cannot be UTF-8."""
    if field in _NUMBER_FIELDS:
        if isinstance(value, bool):
            raise ValueError("Input should be a number, not a boolean")
        if isinstance(value, float | str):
            try:
                number = float(value)
            except ValueError:
                return value  # the field's own validation says what is wrong
            if not math.isfinite(number):
                raise ValueError("Input should be a finite number")
    if isinstance(value, str):
        # A lone surrogate ("\ud800" in JSON) cannot be encoded and would fail the exposition.
        return value.encode("utf-8", "replace").decode("utf-8")
    return value


class PipelineRef(_Lenient):
    """The short pipeline view embedded in an action."""

    id: int | None = None
    name: str | None = None
    html_url: str | None = None
    last_execution_status: str | None = None


class Action(_Lenient):
    """A pipeline action (``GET .../actions/{id}``, or an item of the action list)."""

    _required_fields: ClassVar[frozenset[str]] = frozenset({"id"})

    id: int
    name: str | None = None
    type: str | None = None
    html_url: str | None = None
    trigger_time: str | None = None
    run_next: str | None = None
    last_execution_status: str | None = None
    disabled: bool | None = None
    ignore_errors: bool | None = None
    timeout: float | None = None
    retry_count: float | None = None
    retry_interval: float | None = None
    pipeline: PipelineRef | None = None


#: The fields an action's metrics are made of: a list item that lacks one of
#: them is a summary, and the full object must be fetched (``fetch_mode: auto``).
ACTION_METRIC_FIELDS = frozenset(
    {
        "name", "type", "html_url", "trigger_time", "run_next", "last_execution_status",
        "disabled", "ignore_errors", "timeout", "retry_count", "retry_interval",
    }
)  # fmt: skip


class Project(_Lenient):
    """A project (an item of ``GET /workspaces/{w}/projects``); keyed by ``name``."""

    _required_fields: ClassVar[frozenset[str]] = frozenset({"name"})

    name: str
    status: str | None = None


class Pipeline(_Lenient):
    """A pipeline (``GET .../pipelines/{id}`` or an item of the pipeline list)."""

    _required_fields: ClassVar[frozenset[str]] = frozenset({"id"})

    id: int
    name: str | None = None
    html_url: str | None = None
    last_execution_status: str | None = None
    disabled: bool | None = None
    paused: bool | None = None


def error_message(body: Any) -> str | None:
    """The message of a Buddy error body (``{"errors":[{"message":…}]}`` or ``{"error":…}``)."""
    if not isinstance(body, dict):
        return None
    errors = body.get("errors")
    if isinstance(errors, list):
        messages = [
            e["message"]
            for e in errors
            if isinstance(e, dict) and isinstance(e.get("message"), str)
        ]
        if messages:
            return "; ".join(messages)
    single = body.get("error")
    return single if isinstance(single, str) else None
