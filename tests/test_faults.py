"""The fault matrix of issue 4, one test per case, against the simulator over loopback.

Every test checks: the exporter keeps serving, the faulty target gets the right
series and self-metrics, the targets of another workspace are unaffected, and
the request log stays within the budget. Targets are fetched one at a time
(``max_concurrency: 1``) so that the order of requests, and with it what a
refusal or a 429 stops, is deterministic.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import (
    TOKEN,
    RunningExporter,
    config_for,
    current_status,
    find,
    free_port,
    http_get,
    value,
)
from test_ratelimit import assert_within_budget

from exporter.client import ACTION_ENDPOINT
from exporter.simulator import Fault, Simulator

Start = Callable[..., RunningExporter]
RATE, BURST = 20.0, 5
BUILD = {"workspace": "acme", "action_id": "101"}
FETCH = {"workspace": "acme", "action_id": "102"}
NOTIFY = {"workspace": "acme", "action_id": "201"}
OTHERS = ({"workspace": "beta", "action_id": "301"}, {"workspace": "beta", "action_id": "302"})


@pytest.fixture
def two_workspaces(sim: Simulator) -> Iterator[Simulator]:
    """The shared simulator (workspace acme) plus a second workspace, beta."""
    sim.add_action("beta", "web", 3, 301, "Lint", "BUILD", last_execution_status="SUCCESSFUL")
    sim.add_action("beta", "web", 3, 302, "Ship", "SSH_COMMAND", last_execution_status="FAILED")
    yield sim


def settings(sim: Simulator, **buddy: Any) -> dict[str, Any]:
    return config_for(
        sim,
        buddy={
            "max_requests_per_second": RATE,
            "burst": BURST,
            "max_concurrency": 1,
            "max_retries": 3,
            "retry_backoff_seconds": 0.02,
            **buddy,
        },
    )


def requests(out: str, code: str) -> float:
    return value(out, "buddy_exporter_api_requests_total", endpoint=ACTION_ENDPOINT, code=code) or 0


def errors(out: str, reason: str) -> float:
    return value(out, "buddy_exporter_errors_total", reason=reason) or 0


def survived(exporter: RunningExporter, sim: Simulator) -> str:
    """The checks every case shares; returns the current exposition."""
    assert http_get(exporter.url + "/healthz")[0] == 200
    assert http_get(exporter.url + "/readyz")[0] == 200
    out = exporter.metrics()
    assert [v for _, v in find(out, "buddy_exporter_build_info")] == [1]
    assert value(out, "buddy_up", workspace="beta") == 1
    for other in OTHERS:
        assert value(out, "buddy_action_poll_success", **other) == 1, other
    assert current_status(out, **OTHERS[0]) == ["SUCCESSFUL"]
    assert current_status(out, **OTHERS[1]) == ["FAILED"]
    assert_within_budget(sim.requests, RATE, BURST)
    return out


def logged(caplog: pytest.LogCaptureFixture, *parts: str) -> bool:
    return any(
        all(p in r.getMessage() for p in parts)
        for r in caplog.records
        if r.levelno >= logging.WARNING
    )


def test_401_fails_the_workspace_once_then_backs_off(
    two_workspaces: Simulator, run_exporter: Start, caplog: pytest.LogCaptureFixture
) -> None:
    sim = two_workspaces
    exporter = run_exporter(settings(sim))
    sim.set_token("acme", "rotated-elsewhere")
    exporter.poll()
    out = survived(exporter, sim)
    assert requests(out, "401") == 1  # not retried; the other two acme targets were not asked
    assert errors(out, "unauthorized") == 3
    for target in (BUILD, FETCH, NOTIFY):
        assert value(out, "buddy_action_poll_success", **target) == 0
    assert current_status(out, **BUILD) == ["SUCCESSFUL"]  # last good values kept until stale
    assert value(out, "buddy_up", workspace="acme") == 0
    assert logged(caplog, "action_id=101", "unauthorized", "Invalid or expired access token")
    before = sim.request_count(r"^/workspaces/acme/")
    exporter.poll()  # the next cycle leaves acme alone
    out = survived(exporter, sim)
    assert sim.request_count(r"^/workspaces/acme/") == before
    assert errors(out, "unauthorized") == 6


def test_403_fails_the_workspace_once_then_backs_off(
    two_workspaces: Simulator, run_exporter: Start, caplog: pytest.LogCaptureFixture
) -> None:
    sim = two_workspaces
    exporter = run_exporter(settings(sim))
    message = "Only active workspace have access to API"
    sim.add_fault(Fault(path=r"^/workspaces/acme/", status=403, body=json.dumps({"errors": [{"message": message}]})))  # fmt: skip
    exporter.poll()
    out = survived(exporter, sim)
    assert requests(out, "403") == 1
    assert errors(out, "forbidden") == 3
    assert value(out, "buddy_action_poll_success", **NOTIFY) == 0
    assert logged(caplog, "action_id=101", "forbidden", message)
    exporter.poll()
    out = survived(exporter, sim)
    assert requests(out, "403") == 1
    assert errors(out, "forbidden") == 6


def test_404_removes_the_action_without_retries(
    two_workspaces: Simulator, run_exporter: Start
) -> None:
    sim = two_workspaces
    exporter = run_exporter(settings(sim))
    sim.remove_action("acme", "shop", 1, 102)
    exporter.poll()
    out = survived(exporter, sim)
    assert requests(out, "404") == 1
    assert errors(out, "not_found") == 1
    assert find(out, "buddy_action_last_execution_status", **FETCH) == []
    assert find(out, "buddy_action_info", **FETCH) == []
    assert value(out, "buddy_action_poll_success", **FETCH) == 0
    assert value(out, "buddy_action_poll_success", **BUILD) == 1  # same workspace, unaffected
    exporter.poll()
    assert requests(exporter.metrics(), "404") == 2  # asked again next cycle: no cooldown for 404


def first_429_time(sim: Simulator) -> float:
    return next(r.time for r in sim.requests if r.status == 429)


def after(sim: Simulator, t: float) -> list[float]:
    return [r.time for r in sim.requests if r.time > t]


def test_429_with_reset_header_stops_every_request_until_the_reset(
    two_workspaces: Simulator, run_exporter: Start
) -> None:
    sim = two_workspaces
    exporter = run_exporter(settings(sim))
    reset = math.ceil(time.time()) + 1
    sim.add_fault(Fault(path=r"/actions/101$", status=429, times=1,
                        headers={"X-Rate-Limit-Remaining": "0", "X-Rate-Limit-Reset": str(reset)}))  # fmt: skip
    exporter.poll()
    out = survived(exporter, sim)
    stopped_at = first_429_time(sim)
    later = after(sim, stopped_at)
    assert len(later) == 5  # the retry of 101, then 102, 201, 301, 302
    assert min(later) >= reset, [t - reset for t in later]
    assert requests(out, "429") == 1
    assert errors(out, "rate_limited") == 0  # waited out within the cycle: every fetch succeeded
    assert value(out, "buddy_up", workspace="acme") == 1


def test_429_with_retry_after_stops_every_request_for_that_long(
    two_workspaces: Simulator, run_exporter: Start
) -> None:
    sim = two_workspaces
    exporter = run_exporter(settings(sim))
    sim.add_fault(Fault(path=r"/actions/102$", status=429, times=1, headers={"Retry-After": "1"}))
    exporter.poll()
    out = survived(exporter, sim)
    stopped_at = first_429_time(sim)
    later = after(sim, stopped_at)
    assert len(later) == 4  # the retry of 102, then 201, 301, 302
    assert min(later) - stopped_at >= 1.0
    assert requests(out, "429") == 1
    assert value(out, "buddy_action_poll_success", **FETCH) == 1


def test_429_with_an_html_body_is_recognised_by_its_status(
    two_workspaces: Simulator, run_exporter: Start
) -> None:
    sim = two_workspaces
    exporter = run_exporter(settings(sim))
    sim.rate_limit_headers = False  # a proxy in front of Buddy: only its own header
    reset = math.ceil(time.time()) + 1
    sim.add_fault(Fault(path=r"/actions/201$", status=429, times=1, content_type="text/html",
                        body="<html><body><h1>429 Too Many Requests</h1></body></html>",
                        headers={"X-Rate-Limit-Reset": str(reset)}))  # fmt: skip
    exporter.poll()
    out = survived(exporter, sim)
    later = after(sim, first_429_time(sim))
    assert len(later) == 3 and min(later) >= reset
    assert requests(out, "429") == 1
    assert errors(out, "invalid_json") == 0 and errors(out, "http_error") == 0
    assert value(out, "buddy_action_poll_success", **NOTIFY) == 1


def test_500_is_retried_then_fails_only_that_action(
    two_workspaces: Simulator, run_exporter: Start, caplog: pytest.LogCaptureFixture
) -> None:
    sim = two_workspaces
    exporter = run_exporter(settings(sim))
    sim.add_fault(Fault(path=r"/actions/101$", status=500))
    exporter.poll()
    out = survived(exporter, sim)
    assert requests(out, "500") == 4  # 1 + max_retries
    assert errors(out, "server_error") == 1
    assert value(out, "buddy_action_poll_success", **BUILD) == 0
    assert current_status(out, **BUILD) == ["SUCCESSFUL"]
    assert value(out, "buddy_action_poll_success", **FETCH) == 1
    assert logged(caplog, "action_id=101", "server_error", "HTTP 500")


def test_502_that_passes_is_retried_within_the_cycle(
    two_workspaces: Simulator, run_exporter: Start
) -> None:
    sim = two_workspaces
    exporter = run_exporter(settings(sim))
    sim.update_action("acme", "shop", 1, 102, last_execution_status="INPROGRESS")
    sim.add_fault(Fault(path=r"/actions/102$", status=502, times=2, content_type="text/html",
                        body="<html>502 Bad Gateway</html>"))  # fmt: skip
    exporter.poll()
    out = survived(exporter, sim)
    assert requests(out, "502") == 2
    assert errors(out, "server_error") == 0
    assert value(out, "buddy_action_poll_success", **FETCH) == 1
    assert current_status(out, **FETCH) == [
        "INPROGRESS"
    ]  # the fresh value, fetched on the third try
    assert value(out, "buddy_up", workspace="acme") == 1


def test_503_gives_up_after_max_retries(two_workspaces: Simulator, run_exporter: Start) -> None:
    sim = two_workspaces
    exporter = run_exporter(settings(sim, max_retries=1))
    sim.add_fault(Fault(path=r"/actions/201$", status=503, body=""))
    exporter.poll()
    out = survived(exporter, sim)
    assert requests(out, "503") == 2
    assert errors(out, "server_error") == 1
    assert value(out, "buddy_action_poll_success", **NOTIFY) == 0


def test_delay_past_the_timeout_is_a_retried_timeout(
    two_workspaces: Simulator, run_exporter: Start
) -> None:
    sim = two_workspaces
    exporter = run_exporter(settings(sim, request_timeout_seconds=0.3, max_retries=1))
    sim.add_fault(Fault(path=r"/actions/201$", delay=1.0, passthrough=True))
    exporter.poll()
    out = survived(exporter, sim)
    assert requests(out, "error") == 2
    assert errors(out, "timeout") == 1
    assert value(out, "buddy_action_poll_success", **NOTIFY) == 0
    assert current_status(out, **NOTIFY) == ["INITIAL"]  # kept


def test_connection_refused_keeps_the_last_values_and_recovers(run_exporter: Start) -> None:
    port = free_port()
    first = Simulator(token=TOKEN, port=port)
    first.add_action("acme", "shop", 1, 101, "Build", last_execution_status="SUCCESSFUL")
    with first:
        exporter = run_exporter(settings(first))
    # Nobody listens on the port now: connections are refused.
    exporter.poll()
    out = exporter.metrics()
    assert http_get(exporter.url + "/healthz")[0] == 200
    assert value(out, "buddy_action_poll_success", **BUILD) == 0
    assert errors(out, "connection") == 1
    assert requests(out, "error") == 4  # 1 + max_retries, each counted
    assert current_status(out, **BUILD) == ["SUCCESSFUL"]
    assert value(out, "buddy_up", workspace="acme") == 0
    back = Simulator(token=TOKEN, port=port)
    back.add_action("acme", "shop", 1, 101, "Build", last_execution_status="FAILED")
    with back:
        exporter.poll()
        out = exporter.metrics()
        assert value(out, "buddy_action_poll_success", **BUILD) == 1
        assert current_status(out, **BUILD) == ["FAILED"]
        assert_within_budget(first.requests + back.requests, RATE, BURST)


def test_connection_dropped_mid_body_is_a_retried_connection_error(
    two_workspaces: Simulator, run_exporter: Start
) -> None:
    sim = two_workspaces
    exporter = run_exporter(settings(sim))
    sim.add_fault(Fault(path=r"/actions/102$", status=200, truncate=True))
    exporter.poll()
    out = survived(exporter, sim)
    assert errors(out, "connection") == 1
    assert requests(out, "error") == 4
    assert value(out, "buddy_action_poll_success", **FETCH) == 0
    assert current_status(out, **FETCH) == ["FAILED"]


def test_invalid_json_is_not_retried(
    two_workspaces: Simulator, run_exporter: Start, caplog: pytest.LogCaptureFixture
) -> None:
    sim = two_workspaces
    exporter = run_exporter(settings(sim))
    sim.add_fault(Fault(path=r"/actions/101$", status=200, body='{"id": 101, "name": "Bui'))
    before = sim.request_count(r"/actions/101$")
    exporter.poll()
    out = survived(exporter, sim)
    assert sim.request_count(r"/actions/101$") - before == 1
    assert errors(out, "invalid_json") == 1
    assert value(out, "buddy_action_poll_success", **BUILD) == 0
    assert current_status(out, **BUILD) == ["SUCCESSFUL"]
    assert logged(caplog, "action_id=101", "invalid_json", "not valid JSON")


def test_html_page_with_200_is_invalid_json(
    two_workspaces: Simulator, run_exporter: Start, caplog: pytest.LogCaptureFixture
) -> None:
    sim = two_workspaces
    exporter = run_exporter(settings(sim))
    sim.add_fault(Fault(path=r"/actions/102$", status=200, content_type="text/html; charset=utf-8",
                        body="<!DOCTYPE html><html><body>Sign in to continue</body></html>"))  # fmt: skip
    exporter.poll()
    out = survived(exporter, sim)
    assert errors(out, "invalid_json") == 1
    assert requests(out, "200") >= 5
    assert value(out, "buddy_action_poll_success", **FETCH) == 0
    assert logged(caplog, "action_id=102", "invalid_json", "text/html")


def test_null_fields_give_no_series_and_no_error(
    two_workspaces: Simulator, run_exporter: Start
) -> None:
    sim = two_workspaces
    exporter = run_exporter(settings(sim))
    sim.update_action("acme", "shop", 1, 101, timeout=None, retry_count=None, retry_interval=None,
                      disabled=None, last_execution_status=None, trigger_time=None)  # fmt: skip
    exporter.poll()
    out = survived(exporter, sim)
    assert value(out, "buddy_action_poll_success", **BUILD) == 1
    for name in ("buddy_action_timeout_seconds", "buddy_action_retries",
                 "buddy_action_retry_interval_seconds", "buddy_action_disabled",
                 "buddy_action_last_execution_status"):  # fmt: skip
        assert find(out, name, **BUILD) == [], name
    assert value(out, "buddy_action_ignore_errors", **BUILD) == 0  # a field that was sent
    assert find(out, "buddy_action_info", **BUILD)[0][0]["trigger_time"] == ""
    assert sum(v for _, v in find(out, "buddy_exporter_errors_total")) == 0
    assert value(out, "buddy_up", workspace="acme") == 1


def test_numbers_sent_as_strings_are_read_as_numbers(
    two_workspaces: Simulator, run_exporter: Start
) -> None:
    sim = two_workspaces
    exporter = run_exporter(settings(sim))
    sim.update_action("acme", "shop", 1, 101, timeout="300", retry_count="2", retry_interval=" 45 ")
    exporter.poll()
    out = survived(exporter, sim)
    assert value(out, "buddy_action_timeout_seconds", **BUILD) == 300
    assert value(out, "buddy_action_retries", **BUILD) == 2
    assert value(out, "buddy_action_retry_interval_seconds", **BUILD) == 45
    assert errors(out, "invalid_field") == 0


def test_unknown_and_odd_cased_statuses(two_workspaces: Simulator, run_exporter: Start) -> None:
    sim = two_workspaces
    exporter = run_exporter(settings(sim))
    sim.update_action("acme", "shop", 1, 101, last_execution_status="  successful ")
    sim.update_action("acme", "shop", 1, 102, last_execution_status="Waiting_For_Robots")
    sim.update_action("acme", "shop", 2, 201, last_execution_status="in progress?")
    exporter.poll()
    out = survived(exporter, sim)
    assert current_status(out, **BUILD) == ["SUCCESSFUL"]
    assert current_status(out, **FETCH) == ["WAITING_FOR_ROBOTS"]
    assert current_status(out, **NOTIFY) == ["OTHER"]
    assert value(out, "buddy_action_last_execution_status", **FETCH, status="FAILED") == 0
    assert value(out, "buddy_up", workspace="acme") == 1


def test_huge_body_is_cut_off_as_invalid_response(
    two_workspaces: Simulator, run_exporter: Start, caplog: pytest.LogCaptureFixture
) -> None:
    sim = two_workspaces
    exporter = run_exporter(settings(sim, max_response_bytes=1024 * 1024))
    sim.add_fault(Fault(path=r"/actions/102$", status=200, body_size=8 * 1024 * 1024))
    before = sim.request_count(r"/actions/102$")
    exporter.poll()
    out = survived(exporter, sim)
    assert sim.request_count(r"/actions/102$") - before == 1
    assert errors(out, "invalid_response") == 1
    assert value(out, "buddy_action_poll_success", **FETCH) == 0
    assert logged(caplog, "action_id=102", "invalid_response", "larger than 1048576 bytes")


def test_body_that_never_ends_times_out(two_workspaces: Simulator, run_exporter: Start) -> None:
    sim = two_workspaces
    exporter = run_exporter(settings(sim, request_timeout_seconds=0.5, max_retries=1))
    sim.add_fault(Fault(path=r"/actions/201$", status=200, endless=True, trickle_seconds=0.05))
    started = time.monotonic()
    exporter.poll()
    elapsed = time.monotonic() - started
    out = survived(exporter, sim)
    assert errors(out, "timeout") == 1
    assert requests(out, "error") == 2
    assert value(out, "buddy_action_poll_success", **NOTIFY) == 0
    assert elapsed < 3  # two attempts of 0.5 s each, not forever
