"""Parsing of Buddy responses: lenient about everything but the id."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exporter.models import Action, InvalidObject, error_message, normalize_status

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "buddy-api" / "samples"
SAMPLE_DPV = {
    "type": "DOWNLOAD_PACKAGE_VERSION", "id": 302, "name": "Fetch release bundle",
    "html_url": "https://app.buddy.works/acme-dev/storefront/pipelines/pipeline/41/action/302/edit",
    "trigger_time": "ON_EVERY_EXECUTION", "run_next": "WAIT_ON_SUCCESS", "disabled": False,
    "timeout": 600, "ignore_errors": False, "retry_count": 2, "retry_interval": 30,
    "last_execution_status": "FAILED", "loop": [], "package": "storefront-bundle",
    "pipeline": {"id": 41, "name": "Build & deploy staging", "on": "EVENT"},
}  # fmt: skip


def test_documented_action_parses() -> None:
    action = Action.parse(SAMPLE_DPV)
    assert (action.id, action.name, action.type) == (
        302,
        "Fetch release bundle",
        "DOWNLOAD_PACKAGE_VERSION",
    )
    assert (action.timeout, action.retry_count, action.retry_interval) == (600, 2, 30)
    assert action.pipeline is not None and action.pipeline.name == "Build & deploy staging"


@pytest.mark.parametrize(
    "name", ["get-action-build.json", "get-action-download-package-version.json"]
)
def test_shared_samples_parse_without_problems(name: str) -> None:
    path = SAMPLES / name
    if not path.exists():  # the samples live in ../shared beside the clone
        pytest.fail(f"sample {path} is missing")
    problems: list[str] = []
    action = Action.parse(json.loads(path.read_text()), problems)
    assert problems == []
    assert action.id > 0 and action.last_execution_status


def test_unknown_fields_and_nulls_are_accepted() -> None:
    data = {
        **SAMPLE_DPV,
        "brand_new_field": {"x": 1},
        "timeout": None,
        "retry_count": None,
        "pipeline": None,
    }
    problems: list[str] = []
    action = Action.parse(data, problems)
    assert action.timeout is None and action.retry_count is None and action.pipeline is None
    assert problems == []


def test_missing_fields_are_none() -> None:
    action = Action.parse({"id": 7})
    assert action.name is None and action.disabled is None and action.last_execution_status is None


def test_numbers_sent_as_strings_are_read() -> None:
    action = Action.parse({**SAMPLE_DPV, "timeout": "300", "retry_count": "1", "disabled": "true"})
    assert (action.timeout, action.retry_count, action.disabled) == (300, 1, True)


def test_a_bad_field_is_dropped_and_reported_not_fatal() -> None:
    problems: list[str] = []
    action = Action.parse({**SAMPLE_DPV, "timeout": "ten minutes", "disabled": [1]}, problems)
    assert action.timeout is None and action.disabled is None
    assert action.name == "Fetch release bundle"
    assert sorted(problems) == [
        "disabled: Input should be a valid boolean (got [1])",
        "timeout: Input should be a valid number, unable to parse string as a number (got 'ten minutes')",
    ]


@pytest.mark.parametrize(
    "data", [{"name": "no id"}, {"id": "abc"}, {"id": None}, [1, 2], "text", None]
)
def test_object_without_usable_id_is_invalid(data: object) -> None:
    with pytest.raises(InvalidObject):
        Action.parse(data)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("FAILED", "FAILED"),
        (" successful ", "SUCCESSFUL"),
        ("Waiting_For_Apply", "WAITING_FOR_APPLY"),
        ("NEW_STATE_2027", "NEW_STATE_2027"),
        ("in progress", "OTHER"),
        ("", "OTHER"),
        ("ÜBER", "OTHER"),
        ("1ST", "OTHER"),
        (None, None),
    ],
)
def test_status_normalisation(raw: str | None, expected: str | None) -> None:
    assert normalize_status(raw) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"errors": [{"message": "Invalid or expired access token"}]},
            "Invalid or expired access token",
        ),
        ({"errors": [{"message": "a"}, {"message": "b"}]}, "a; b"),
        (
            {"error": "Only active workspace have access to API"},
            "Only active workspace have access to API",
        ),
        ({"errors": "weird"}, None),
        ("<html>", None),
    ],
)
def test_error_message(body: object, expected: str | None) -> None:
    assert error_message(body) == expected


@pytest.mark.parametrize(
    ("field", "raw", "message"),
    [
        ("timeout", True, "Input should be a number, not a boolean"),
        ("retry_count", float("nan"), "Input should be a finite number"),
        ("timeout", float("inf"), "Input should be a finite number"),
        ("timeout", "nan", "Input should be a finite number"),
        ("retry_interval", "-Infinity", "Input should be a finite number"),
    ],
)
def test_made_up_numbers_are_dropped(field: str, raw: object, message: str) -> None:
    problems: list[str] = []
    action = Action.parse({**SAMPLE_DPV, field: raw}, problems)
    assert getattr(action, field) is None
    assert problems and problems[0].startswith(f"{field}: {message}")


def test_boolean_id_is_not_an_id() -> None:
    with pytest.raises(InvalidObject):
        Action.parse({"id": True})


def test_lone_surrogates_are_mended() -> None:
    action = Action.parse(
        json.loads('{"id": 1, "name": "bad\\ud800name", "html_url": "https://x/\\udfff"}')
    )
    assert action.name == "bad?name" and action.html_url == "https://x/?"
    assert action.name.encode("utf-8")


def test_non_ascii_status_does_not_fold_into_a_known_one() -> None:
    assert normalize_status("\u017fuccessful") == "OTHER"  # a long s
