"""The exporter against the simulator over real loopback HTTP."""

from __future__ import annotations

import gzip
import logging
import time
from collections.abc import Callable

import pytest
from conftest import TOKEN, RunningExporter, config_for, current_status, find, http_get, value

from exporter.client import Reason
from exporter.simulator import Fault, Simulator

Start = Callable[..., RunningExporter]
BUILD = {"workspace": "acme", "project": "shop", "pipeline_id": "1", "action_id": "101"}
FETCH = {"workspace": "acme", "project": "shop", "pipeline_id": "1", "action_id": "102"}
NOTIFY = {"workspace": "acme", "project": "shop", "pipeline_id": "2", "action_id": "201"}


def test_values_match_the_api(sim: Simulator, run_exporter: Start) -> None:
    out = run_exporter(config_for(sim)).metrics()
    labels = {**BUILD, "pipeline": "Deploy", "action": "Build"}
    assert current_status(out, **labels) == ["SUCCESSFUL"]
    assert value(out, "buddy_action_retries", **labels) == 2
    assert value(out, "buddy_action_retry_interval_seconds", **labels) == 30
    assert value(out, "buddy_action_timeout_seconds", **labels) == 600
    assert value(out, "buddy_action_disabled", **labels) == 0
    assert value(out, "buddy_action_disabled", **FETCH) == 1
    assert value(out, "buddy_action_ignore_errors", **FETCH) == 1
    assert current_status(out, **FETCH) == ["FAILED"]
    info = find(out, "buddy_action_info", **FETCH)
    assert info[0][0]["action_type"] == "DOWNLOAD_PACKAGE_VERSION"
    assert info[0][0]["url"].endswith("/acme/shop/pipelines/pipeline/1/action/102/edit")
    assert find(out, "buddy_action_info", **NOTIFY)[0][0]["trigger_time"] == "ON_FAILURE"
    assert value(out, "buddy_up") == 1
    # Every error reason exists from the start, at 0, so increase() sees the first one.
    assert {
        lab["reason"]: v for lab, v in find(out, "buddy_exporter_errors_total")
    } == dict.fromkeys(Reason.ALL, 0.0)
    assert value(out, "buddy_exporter_api_requests_total", code="200",
                 endpoint="/workspaces/{workspace}/projects/{project}/pipelines/{pipeline_id}/actions/{action_id}") == 3  # fmt: skip
    assert value(out, "buddy_exporter_api_rate_limit_limit") == 10_000
    assert value(out, "buddy_exporter_api_rate_limit_remaining") is not None
    assert value(out, "buddy_exporter_poll_duration_seconds") is not None


def test_requests_carry_the_documented_headers(sim: Simulator, run_exporter: Start) -> None:
    seen: list[dict[str, str]] = []
    original = sim.handle

    def spy(path: str, query: dict[str, str], auth: str):  # type: ignore[no-untyped-def]
        seen.append({"auth": auth})
        return original(path, query, auth)

    sim.handle = spy  # type: ignore[method-assign]
    run_exporter(config_for(sim))
    assert seen and all(s["auth"] == f"Bearer {TOKEN}" for s in seen)


def test_status_change_flips_the_old_state_to_0(sim: Simulator, run_exporter: Start) -> None:
    exporter = run_exporter(config_for(sim))
    sim.update_action("acme", "shop", 1, 101, last_execution_status="INPROGRESS")
    exporter.poll()
    out = exporter.metrics()
    assert current_status(out, **BUILD) == ["INPROGRESS"]
    assert value(out, "buddy_action_last_execution_status", **BUILD, status="SUCCESSFUL") == 0


def test_deleted_action_disappears_after_next_cycle(sim: Simulator, run_exporter: Start) -> None:
    exporter = run_exporter(config_for(sim))
    sim.remove_action("acme", "shop", 1, 102)
    exporter.poll()
    out = exporter.metrics()
    for name in (
        "buddy_action_last_execution_status",
        "buddy_action_retries",
        "buddy_action_info",
        "buddy_action_disabled",
        "buddy_action_last_success_timestamp_seconds",
    ):
        assert find(out, name, **FETCH) == [], name
    # Configured, so still visible as failing: a typo in an id shows up the same way.
    assert find(out, "buddy_action_poll_success", **FETCH) == [
        ({**FETCH, "pipeline": "", "action": ""}, 0.0)
    ]
    assert current_status(out, **BUILD) == ["SUCCESSFUL"]


def test_one_failing_action_leaves_the_others_updating(sim: Simulator, run_exporter: Start) -> None:
    exporter = run_exporter(config_for(sim))
    sim.add_fault(Fault(path=r"/actions/101$", status=500))
    sim.update_action("acme", "shop", 1, 102, last_execution_status="SUCCESSFUL")
    exporter.poll()
    out = exporter.metrics()
    assert value(out, "buddy_action_poll_success", **BUILD) == 0
    assert current_status(out, **BUILD) == ["SUCCESSFUL"]  # last good value kept
    assert value(out, "buddy_action_poll_success", **FETCH) == 1
    assert current_status(out, **FETCH) == ["SUCCESSFUL"]
    assert value(out, "buddy_up") == 0
    assert value(out, "buddy_exporter_errors_total", reason="server_error") == 1


def test_stale_values_disappear_after_stale_after_seconds(
    sim: Simulator, run_exporter: Start
) -> None:
    exporter = run_exporter(config_for(sim, poll={"interval_seconds": 1, "stale_after_seconds": 1}))
    sim.add_fault(Fault(path=r"/actions/101$", status=503))
    exporter.poll()
    time.sleep(1.1)  # the clock must move past stale_after_seconds; nothing else waits here
    exporter.poll()
    out = exporter.metrics()
    assert find(out, "buddy_action_last_execution_status", **BUILD) == []
    assert find(out, "buddy_action_timeout_seconds", **BUILD) == []
    labels = {**BUILD, "pipeline": "Deploy", "action": "Build"}
    assert value(out, "buddy_action_poll_success", **labels) == 0
    assert value(out, "buddy_action_last_success_timestamp_seconds", **labels) is not None


def test_revoked_token_gives_up_0_while_metrics_keep_answering(
    sim: Simulator, run_exporter: Start
) -> None:
    exporter = run_exporter(config_for(sim))
    sim.set_token("acme", "another-token")
    exporter.poll()
    out = exporter.metrics()
    assert value(out, "buddy_up") == 0
    assert all(v == 0 for _, v in find(out, "buddy_action_poll_success"))
    assert value(out, "buddy_exporter_errors_total", reason="unauthorized") == 3
    assert current_status(out, **BUILD) == ["SUCCESSFUL"]  # kept until stale


@pytest.mark.parametrize(
    "fault",
    [
        Fault(status=200, body="{not json", content_type="application/json"),
        Fault(status=200, body="<html><body>Proxy login</body></html>", content_type="text/html"),
        Fault(status=502, body="<html>Bad gateway</html>", content_type="text/html"),
        Fault(status=200, body='{"name": "no id"}'),
        Fault(status=200, body="[1, 2, 3]"),
        Fault(drop=True),
        Fault(truncate=True, status=200),
    ],
    ids=["invalid-json", "html-200", "html-502", "no-id", "json-list", "dropped", "truncated"],
)
def test_bad_responses_fail_only_that_action(
    sim: Simulator, run_exporter: Start, fault: Fault
) -> None:
    exporter = run_exporter(config_for(sim))
    fault.path = r"/actions/102$"
    sim.add_fault(fault)
    exporter.poll()
    out = exporter.metrics()
    assert value(out, "buddy_action_poll_success", **FETCH) == 0
    assert value(out, "buddy_action_poll_success", **BUILD) == 1
    assert value(out, "buddy_action_poll_success", **NOTIFY) == 1
    assert sum(v for _, v in find(out, "buddy_exporter_errors_total")) >= 1


def test_timeout_fails_only_that_action(sim: Simulator, run_exporter: Start) -> None:
    exporter = run_exporter(config_for(sim, buddy={"request_timeout_seconds": 0.3}))
    sim.add_fault(Fault(path=r"/actions/201$", delay=1.0, passthrough=True))
    exporter.poll()
    out = exporter.metrics()
    assert value(out, "buddy_action_poll_success", **NOTIFY) == 0
    assert value(out, "buddy_exporter_errors_total", reason="timeout") == 1
    assert value(out, "buddy_action_poll_success", **BUILD) == 1


def test_unreachable_buddy_keeps_the_process_serving(run_exporter: Start) -> None:
    data = {
        "buddy": {
            "api_url": "http://127.0.0.1:9",
            "request_timeout_seconds": 1,
            "max_retries": 3,
            "retry_backoff_seconds": 0.02,
        },
        "poll": {"interval_seconds": 3600, "stale_after_seconds": 7200},
        "web": {"listen_address": "127.0.0.1:0"},
        "targets": [{"workspace": "a", "project": "b", "pipeline_id": 1, "action_id": 2}],
    }
    exporter = run_exporter(data)
    out = exporter.metrics()
    assert value(out, "buddy_up") == 0
    assert value(out, "buddy_exporter_errors_total", reason="connection") == 1
    # One fetch, tried 1 + max_retries times; every attempt is counted.
    assert value(out, "buddy_exporter_api_requests_total", code="error",
                 endpoint="/workspaces/{workspace}/projects/{project}/pipelines/{pipeline_id}/actions/{action_id}") == 4  # fmt: skip
    assert http_get(exporter.url + "/healthz")[0] == 200


def test_readyz_is_503_until_the_first_cycle_then_200(sim: Simulator, run_exporter: Start) -> None:
    sim.add_fault(Fault(delay=1.5, passthrough=True, times=3))
    exporter = run_exporter(config_for(sim), wait_ready=False)
    from conftest import wait_for

    wait_for(lambda: http_get(exporter.url + "/healthz")[0] == 200)
    status, _, body = http_get(exporter.url + "/readyz")
    assert status == 503 and b"first poll cycle" in body
    # Before the first cycle /metrics already answers, with buddy_up 0 and every target at 0.
    out = exporter.metrics()
    assert value(out, "buddy_up") == 0
    assert len(find(out, "buddy_action_poll_success")) == 3
    wait_for(lambda: http_get(exporter.url + "/readyz")[0] == 200)


def test_metrics_content_negotiation_and_gzip(sim: Simulator, run_exporter: Start) -> None:
    exporter = run_exporter(config_for(sim))
    status, headers, body = http_get(exporter.url + "/metrics")
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    om_status, om_headers, om_body = http_get(
        exporter.url + "/metrics",
        {"Accept": "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"},
    )
    assert om_headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert om_body.endswith(b"# EOF\n")
    gz_status, gz_headers, gz_body = http_get(
        exporter.url + "/metrics", {"Accept-Encoding": "gzip"}
    )
    assert gz_headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(gz_body) == body
    assert status == om_status == gz_status == 200


def test_landing_page_and_unknown_path(sim: Simulator, run_exporter: Start) -> None:
    exporter = run_exporter(config_for(sim))
    status, headers, body = http_get(exporter.url + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'href="metrics"' in body and b'href="healthz"' in body and b'href="readyz"' in body
    assert http_get(exporter.url + "/nope")[0] == 404


def test_scrapes_do_not_call_buddy(sim: Simulator, run_exporter: Start) -> None:
    exporter = run_exporter(config_for(sim))
    before = sim.request_count()
    for _ in range(5):
        exporter.metrics()
    assert sim.request_count() == before


def test_token_never_appears_in_logs_pages_or_metrics(
    sim: Simulator, run_exporter: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sim.add_fault(
        Fault(
            path=r"/actions/101$",
            status=401,
            body=f'{{"errors":[{{"message":"bad token {TOKEN}"}}]}}',
        )
    )
    sim.add_fault(
        Fault(
            path=r"/actions/102$",
            status=500,
            body=f"<html>{TOKEN}</html>",
            content_type="text/html",
        )
    )
    exporter = run_exporter(config_for(sim, log={"level": "debug"}))
    exporter.poll()
    pages = [
        http_get(exporter.url + p)[2].decode() for p in ("/", "/metrics", "/healthz", "/readyz")
    ]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "bad token" in logged  # the message was logged ...
    assert TOKEN not in logged  # ... with the token taken out
    for page in pages:
        assert TOKEN not in page
