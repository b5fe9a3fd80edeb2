"""Hostile API responses found by attacking the exporter: each costs one object, never the cycle."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable

import pytest
from conftest import RunningExporter, config_for, current_status, find, value
from tools import promtool

from exporter.simulator import Fault, Simulator

Start = Callable[..., RunningExporter]


def promtool_ok(text: str) -> None:
    result = subprocess.run(
        [promtool(), "check", "metrics"], input=text.encode(), capture_output=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_lone_surrogate_in_a_name_neither_breaks_the_exposition_nor_the_cycle(
    sim: Simulator, run_exporter: Start
) -> None:
    exporter = run_exporter(config_for(sim))
    sim.update_action("acme", "shop", 1, 102, html_url="https://x/\udfff", name="bad\ud800name")
    sim.update_action("acme", "shop", 1, 101, last_execution_status="FAILED")
    exporter.poll()
    out = exporter.metrics()
    assert current_status(out, action_id="101") == ["FAILED"]
    assert find(out, "buddy_action_info", action_id="102")[0][0]["action"] == "bad?name"
    promtool_ok(out)


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (
            Fault(status=200, body=b"not gzip at all", headers={"Content-Encoding": "gzip"}),
            "invalid_response",
        ),
        (Fault(status=200, body=b"[" * 100_000), "invalid_json"),
        (Fault(status=500, body=b"[" * 100_000), "server_error"),
        (
            Fault(
                status=200,
                body=b'{"id": 999, "name": "impostor", "last_execution_status": "FAILED"}',
            ),
            "invalid_response",
        ),
    ],
    ids=["bad-gzip", "deep-json", "deep-json-error-body", "wrong-id"],
)
def test_undecodable_or_wrong_bodies_fail_only_that_action(
    sim: Simulator, run_exporter: Start, fault: Fault, reason: str
) -> None:
    exporter = run_exporter(config_for(sim, buddy={"max_retries": 0}))
    fault.path = r"/actions/101$"
    sim.add_fault(fault)
    sim.update_action("acme", "shop", 2, 201, last_execution_status="FAILED")
    exporter.poll()
    out = exporter.metrics()
    assert value(out, "buddy_action_poll_success", action_id="101") == 0
    assert current_status(out, action_id="101") == [
        "SUCCESSFUL"
    ]  # the last good value, not the impostor's
    assert current_status(out, action_id="201") == ["FAILED"]
    assert value(out, "buddy_exporter_errors_total", reason=reason) == 1
    assert value(out, "buddy_exporter_errors_total", reason="internal") == 0


def test_odd_names_are_escaped_in_request_paths(run_exporter: Start) -> None:
    sim = Simulator(token="tok-3f9a1c77-secret-value")
    for i, name in enumerate(["sh/op", "a?b=c", "..", "new\nline", "shop"], start=1):
        sim.add_action("acme", name, i, i * 10, f"Step {i}")
    with sim:
        out = run_exporter(
            config_for(sim, targets=[{"workspace": "acme"}]), token="tok-3f9a1c77-secret-value"
        ).metrics()
        paths = {r.path for r in sim.requests}
    assert {lab["project"] for lab, _ in find(out, "buddy_action_poll_success")} == {
        "sh/op",
        "a?b=c",
        "..",
        "new\nline",
        "shop",
    }
    assert "/workspaces/acme/projects/sh%2Fop/pipelines" in paths
    assert "/workspaces/acme/projects/%2E%2E/pipelines" in paths
    assert value(out, "buddy_up", workspace="acme") == 1
    promtool_ok(out)


def test_duplicate_ids_in_a_listing_keep_the_first_and_are_counted(
    sim: Simulator, run_exporter: Start, caplog: pytest.LogCaptureFixture
) -> None:
    sim.list_actions = "full"
    body = (
        '{"actions": [{"id": 101, "name": "X", "last_execution_status": "SUCCESSFUL"},'
        ' {"id": 101, "name": "Y", "last_execution_status": "FAILED"}]}'
    )
    sim.add_fault(Fault(path=r"/pipelines/1/actions$", status=200, body=body))
    out = run_exporter(config_for(sim, targets=[{"workspace": "acme", "project": "shop", "pipeline_id": 1}],
                                  buddy={"fetch_mode": "list"})).metrics()  # fmt: skip
    assert [
        lab["action"] for lab, _ in find(out, "buddy_action_poll_success", action_id="101")
    ] == ["X"]
    assert value(out, "buddy_exporter_errors_total", reason="invalid_response") == 1
    assert "skipping a second item with the id 101" in caplog.text


def test_a_bad_field_is_logged_once_not_every_cycle(
    sim: Simulator, run_exporter: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    sim.update_action("acme", "shop", 1, 102, timeout="ten minutes")
    exporter = run_exporter(config_for(sim))
    for _ in range(3):
        exporter.poll()
    lines = [r.getMessage() for r in caplog.records if "ignoring a bad field" in r.getMessage()]
    assert len(lines) == 1, lines
    assert (
        value(exporter.metrics(), "buddy_exporter_errors_total", reason="invalid_field") == 4
    )  # counted each cycle


def test_a_bad_field_that_holds_the_token_does_not_leak_a_part_of_it(
    sim: Simulator, run_exporter: Start, caplog: pytest.LogCaptureFixture
) -> None:
    from conftest import TOKEN

    sim.update_action("acme", "shop", 1, 102, timeout="A" * 40 + TOKEN)  # the cut falls inside it
    exporter = run_exporter(config_for(sim))
    exporter.poll()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "ignoring a bad field" in logged
    assert TOKEN[:8] not in logged
