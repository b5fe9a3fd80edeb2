"""Discovery: wildcard scopes, filters, pagination, request economy, workspaces, sharding."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from conftest import TOKEN, RunningExporter, config_for, find, samples, value

from exporter.simulator import Fault, Simulator

Start = Callable[..., RunningExporter]


@pytest.fixture
def company() -> Simulator:
    """3 projects x 2 pipelines x 3 actions, plus a closed project; not started."""
    sim = Simulator(token=TOKEN)
    sim.seed_generated("acme", projects=3, pipelines=2, actions=3)
    sim.add_project("acme", "old-site", status="CLOSED")
    sim.add_action("acme", "old-site", 99, 990, "Legacy deploy")
    return sim


def action_ids(text: str) -> set[int]:
    return {int(labels["action_id"]) for labels, _ in find(text, "buddy_action_poll_success")}


def pipeline_ids(text: str) -> set[int]:
    return {int(labels["pipeline_id"]) for labels, _ in find(text, "buddy_pipeline_info")}


def cfg(sim: Simulator, targets: list[dict[str, Any]], **sections: Any) -> dict[str, Any]:
    return config_for(sim, targets=targets, **sections)


def test_workspace_scope_discovers_every_active_project_pipeline_and_action(
    company: Simulator, run_exporter: Start
) -> None:
    with company:
        out = run_exporter(cfg(company, [{"workspace": "acme"}])).metrics()
    assert action_ids(out) == set(range(1, 19))  # not 990: its project is CLOSED
    assert pipeline_ids(out) == set(range(1, 7))
    assert value(out, "buddy_exporter_targets", kind="project") == 3
    assert value(out, "buddy_exporter_targets", kind="pipeline") == 6
    assert value(out, "buddy_exporter_targets", kind="action") == 18
    assert value(out, "buddy_up", workspace="acme") == 1
    # Names come from the API, pipeline series carry their status.
    labels = find(out, "buddy_action_poll_success", action_id="1")[0][0]
    assert (labels["project"], labels["pipeline"], labels["action"]) == (
        "project-0000",
        "Pipeline 1",
        "Action 1",
    )
    assert (
        sum(v for _, v in find(out, "buddy_pipeline_last_execution_status", pipeline_id="1")) == 1
    )


def test_closed_projects_on_request(company: Simulator, run_exporter: Start) -> None:
    with company:
        out = run_exporter(
            cfg(company, [{"workspace": "acme", "include_closed_projects": True}])
        ).metrics()
    assert 990 in action_ids(out)


def test_project_and_pipeline_scopes(company: Simulator, run_exporter: Start) -> None:
    with company:
        out = run_exporter(
            cfg(company, [{"workspace": "acme", "project": "project-0001"}])
        ).metrics()
        assert action_ids(out) == set(range(7, 13))
        out = run_exporter(
            cfg(company, [{"workspace": "acme", "project": "project-0002", "pipeline_id": 6}])
        ).metrics()
        assert action_ids(out) == {16, 17, 18}
        assert pipeline_ids(out) == {6}


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ({"include": {"project": "project-000[02]"}}, set(range(1, 7)) | set(range(13, 19))),
        ({"exclude": {"project": "project-0000"}}, set(range(7, 19))),
        ({"include": {"pipeline": "Pipeline [12]"}}, set(range(1, 7))),
        ({"exclude": {"pipeline": "Pipeline .*"}}, set()),
        ({"include": {"action": "Action (1|2)"}}, {1, 2}),
        ({"exclude": {"action": "Action 1.*"}}, set(range(2, 10))),
        (
            {"include": {"action_type": "BUILD|SSH_COMMAND"}},
            {1, 3, 4, 6, 7, 9, 10, 12, 13, 15, 16, 18},
        ),
        ({"include": {"action_type": "DOWNLOAD_PACKAGE_VERSION"}}, {2, 5, 8, 11, 14, 17}),
        ({"include": {"action": "Action"}}, set()),  # anchored: a part of a name does not match
    ],
    ids=[
        "include-project",
        "exclude-project",
        "include-pipeline",
        "exclude-pipeline",
        "include-action",
        "exclude-action",
        "include-types",
        "one-type",
        "anchored",
    ],
)
def test_filters(
    company: Simulator, run_exporter: Start, target: dict[str, Any], expected: set[int]
) -> None:
    with company:
        out = run_exporter(cfg(company, [{"workspace": "acme", **target}])).metrics()
    assert action_ids(out) == expected


def test_disabled_objects_are_left_out_on_request(company: Simulator, run_exporter: Start) -> None:
    company.update_action("acme", "project-0000", 1, 2, disabled=True)
    company.update_pipeline("acme", "project-0001", 3, disabled=True)
    with company:
        everything = run_exporter(cfg(company, [{"workspace": "acme"}])).metrics()
        enabled = run_exporter(
            cfg(company, [{"workspace": "acme", "include_disabled": False}])
        ).metrics()
    assert value(everything, "buddy_action_disabled", action_id="2") == 1
    assert value(everything, "buddy_pipeline_disabled", pipeline_id="3") == 1
    assert action_ids(enabled) == set(range(1, 19)) - {2, 7, 8, 9}
    assert 3 not in pipeline_ids(enabled)


def test_object_matched_by_two_targets_is_exported_once(
    company: Simulator, run_exporter: Start
) -> None:
    targets = [
        {"workspace": "acme"},
        {"workspace": "acme", "project": "project-0000"},
        {"workspace": "acme", "project": "project-0000", "pipeline_id": 1},
        {"workspace": "acme", "project": "project-0000", "pipeline_id": 1, "action_id": 1},
    ]
    with company:
        exporter = run_exporter(cfg(company, targets))
        out = exporter.metrics()
        before = company.request_count()
        exporter.poll()
        per_cycle = company.request_count() - before
    assert len(find(out, "buddy_action_poll_success", action_id="1")) == 1
    assert len(find(out, "buddy_action_last_execution_status", action_id="1")) == 13
    assert action_ids(out) == set(range(1, 19))
    # Shared requests are made once per cycle: 3 pipeline lists, the pipeline target's own
    # GET of pipeline 1, and 18 action GETs (action 1 once, though three targets cover it).
    assert per_cycle == 3 + 1 + 18


def test_added_action_appears_after_discovery_and_removed_one_vanishes(
    company: Simulator, run_exporter: Start
) -> None:
    with company:
        exporter = run_exporter(
            cfg(company, [{"workspace": "acme"}], poll={"discovery_interval_seconds": 3600})
        )
        company.add_action("acme", "project-0000", 1, 500, "New step")
        company.remove_action("acme", "project-0000", 2, 4)
        exporter.poll()
        out = exporter.metrics()
        assert 4 not in action_ids(out)  # gone at once (404 on its GET)
        assert 500 not in action_ids(out)  # summary lists: new actions wait for the next discovery
        exporter.exporter.poller._last_discovery = 0.0  # make discovery due now
        exporter.poll()
        assert 500 in action_ids(exporter.metrics())


def test_list_mode_sees_new_and_removed_actions_every_cycle(
    company: Simulator, run_exporter: Start
) -> None:
    company.list_actions = "full"
    with company:
        exporter = run_exporter(cfg(company, [{"workspace": "acme"}], buddy={"fetch_mode": "list"}))
        company.add_action("acme", "project-0000", 1, 500, "New step")
        company.remove_action("acme", "project-0000", 2, 4)
        company.remove_pipeline("acme", "project-0002", 6)
        exporter.poll()
        out = exporter.metrics()
    assert 500 in action_ids(out) and 4 not in action_ids(out)
    assert {16, 17, 18} & action_ids(out) == set() and 6 not in pipeline_ids(out)


def test_listing_that_fails_removes_nothing(company: Simulator, run_exporter: Start) -> None:
    with company:
        exporter = run_exporter(cfg(company, [{"workspace": "acme"}]))
        company.add_fault(Fault(path=r"/projects/project-0000/pipelines$", status=500))
        company.update_action("acme", "project-0001", 3, 7, last_execution_status="FAILED")
        exporter.poll()
        out = exporter.metrics()
    assert action_ids(out) == set(range(1, 19))
    assert pipeline_ids(out) == set(range(1, 7))
    assert value(out, "buddy_action_poll_success", action_id="1") == 0  # not refreshed
    assert value(out, "buddy_action_poll_success", action_id="7") == 1
    assert value(out, "buddy_action_last_execution_status", action_id="7", status="FAILED") == 1
    assert value(out, "buddy_up", workspace="acme") == 0


def test_projects_listing_that_fails_at_discovery_removes_nothing(
    company: Simulator, run_exporter: Start
) -> None:
    with company:
        exporter = run_exporter(cfg(company, [{"workspace": "acme"}]))
        company.add_fault(Fault(path=r"/workspaces/acme/projects$", status=503))
        exporter.exporter.poller._last_discovery = 0.0
        exporter.poll()
        out = exporter.metrics()
    assert action_ids(out) == set(range(1, 19))
    assert value(out, "buddy_action_poll_success", action_id="1") == 1  # pipelines still listed


def test_first_discovery_failing_is_retried_next_cycle(
    company: Simulator, run_exporter: Start
) -> None:
    # Failing every attempt of the first cycle (1 + buddy.max_retries), then answering.
    company.add_fault(Fault(path=r"/workspaces/acme/projects$", status=500, times=4))
    with company:
        exporter = run_exporter(cfg(company, [{"workspace": "acme"}]))
        assert action_ids(exporter.metrics()) == set()
        exporter.poll()
        assert action_ids(exporter.metrics()) == set(range(1, 19))


def test_pagination_reads_every_page_including_a_short_last_one(run_exporter: Start) -> None:
    sim = Simulator(token=TOKEN)
    sim.seed_generated("acme", projects=65, pipelines=1, actions=1)
    with sim:
        out = run_exporter(cfg(sim, [{"workspace": "acme"}], buddy={"per_page": 30})).metrics()
        pages = [r.query.get("page") for r in sim.requests if r.path == "/workspaces/acme/projects"]
    assert value(out, "buddy_exporter_targets", kind="project") == 65
    assert len(action_ids(out)) == 65
    assert pages == ["1", "2", "3"]  # 30 + 30 + 5: the short page ends it, no empty page needed


def test_pagination_stops_on_an_empty_page(run_exporter: Start) -> None:
    sim = Simulator(token=TOKEN)
    sim.seed_generated("acme", projects=40, pipelines=1, actions=1)
    with sim:
        run_exporter(cfg(sim, [{"workspace": "acme"}], buddy={"per_page": 20}))
        pages = [r.query.get("page") for r in sim.requests if r.path == "/workspaces/acme/projects"]
    assert pages == ["1", "2", "3"]  # 20 + 20 + an empty page


def test_a_server_that_repeats_a_page_forever_is_detected(
    run_exporter: Start, caplog: pytest.LogCaptureFixture
) -> None:
    sim = Simulator(token=TOKEN)
    sim.seed_generated("acme", projects=45, pipelines=1, actions=1)
    with sim:
        exporter = run_exporter(cfg(sim, [{"workspace": "acme"}], buddy={"per_page": 30}))
        assert len(action_ids(exporter.metrics())) == 45
        sim.broken_pagination = True
        exporter.exporter.poller._last_discovery = 0.0
        exporter.poll()
        out = exporter.metrics()
        pages = [r.query.get("page") for r in sim.requests if r.path == "/workspaces/acme/projects"]
    assert pages[-2:] == ["1", "2"]  # stopped at the first repeat
    assert len(action_ids(out)) == 45  # nothing removed
    assert value(out, "buddy_exporter_errors_total", reason="invalid_response") == 1
    assert value(out, "buddy_up", workspace="acme") == 0
    assert "repeats an earlier page" in caplog.text


@pytest.mark.parametrize(
    ("paginated", "requests"),
    [(False, 1), (True, 2)],
    ids=["ignores-pagination", "paginated"],
)
def test_action_list_longer_than_a_page(
    run_exporter: Start, paginated: bool, requests: int
) -> None:
    sim = Simulator(token=TOKEN, list_actions="full")
    sim.paginate_actions = paginated
    for i in range(1, 46):  # more than one page's worth
        sim.add_action("acme", "shop", 1, i, f"Step {i}")
    with sim:
        data = cfg(
            sim,
            [{"workspace": "acme", "project": "shop"}],
            buddy={"fetch_mode": "list", "per_page": 30},
        )
        out = run_exporter(data).metrics()
        action_lists = [r for r in sim.requests if r.path.endswith("/actions")]
    assert action_ids(out) == set(range(1, 46))
    assert len(action_lists) == requests


@pytest.mark.parametrize(
    ("fetch_mode", "list_actions", "discovery", "steady"),
    [
        # P=3 projects, L=6 pipelines, A=18 actions; discovery adds the projects list.
        ("list", "full", 1 + 3 + 6, 3 + 6),
        ("list", "summary", 1 + 3 + 6, 3 + 6),
        ("get", "full", 1 + 3 + 6 + 18, 3 + 18),
        ("auto", "full", 1 + 3 + 6, 3 + 6),
        ("auto", "summary", 1 + 3 + 6 + 18, 3 + 18),
    ],
)
def test_requests_per_cycle(
    company: Simulator,
    run_exporter: Start,
    fetch_mode: str,
    list_actions: str,
    discovery: int,
    steady: int,
) -> None:
    company.list_actions = list_actions
    with company:
        exporter = run_exporter(
            cfg(company, [{"workspace": "acme"}], buddy={"fetch_mode": fetch_mode})
        )
        first = value(exporter.metrics(), "buddy_exporter_cycle_requests")
        before = company.request_count()
        exporter.poll()
        out = exporter.metrics()
        assert company.request_count() - before == steady
    assert first == discovery
    assert value(out, "buddy_exporter_cycle_requests") == steady
    assert len(action_ids(out)) == 18


def test_list_mode_with_summary_lists_exports_only_what_they_carry(
    company: Simulator, run_exporter: Start
) -> None:
    with company:
        out = run_exporter(
            cfg(company, [{"workspace": "acme"}], buddy={"fetch_mode": "list"})
        ).metrics()
    assert value(out, "buddy_action_disabled", action_id="1") == 0
    assert find(out, "buddy_action_timeout_seconds") == []  # not in a summary, so no series


def test_same_values_in_list_and_get_modes(company: Simulator, run_exporter: Start) -> None:
    company.list_actions = "full"
    with company:
        by_list = run_exporter(
            cfg(company, [{"workspace": "acme"}], buddy={"fetch_mode": "list"})
        ).metrics()
        by_get = run_exporter(
            cfg(company, [{"workspace": "acme"}], buddy={"fetch_mode": "get"})
        ).metrics()

    def buddy_series(text: str) -> dict[Any, float]:
        return {k: v for k, v in samples(text).items() if k[0].startswith(("buddy_action_", "buddy_pipeline_"))
                and k[0] != "buddy_action_last_success_timestamp_seconds"}  # fmt: skip

    assert buddy_series(by_list) == buddy_series(by_get)
    assert len(buddy_series(by_list)) > 18 * 13


def test_two_workspaces_with_their_own_tokens_one_revoked(
    run_exporter: Start, tmp_path: Any
) -> None:
    sim = Simulator(token=TOKEN)
    sim.add_workspace("acme", token=TOKEN)
    sim.add_workspace("labs", token="labs-token-9d2e")
    sim.add_action("acme", "shop", 1, 1, "Build")
    sim.add_action("labs", "lab", 2, 2, "Train")
    token_file = tmp_path / "labs-token"
    token_file.write_text("labs-token-9d2e\n")
    with sim:
        data = cfg(sim, [{"workspace": "acme"}, {"workspace": "labs"}],
                   workspaces=[{"workspace": "labs", "token_file": str(token_file)}])  # fmt: skip
        exporter = run_exporter(data)
        out = exporter.metrics()
        assert action_ids(out) == {1, 2}
        assert (
            value(out, "buddy_up", workspace="acme") == 1
            and value(out, "buddy_up", workspace="labs") == 1
        )
        sim.set_token("labs", "rotated-elsewhere")
        sim.update_action("acme", "shop", 1, 1, last_execution_status="FAILED")
        exporter.poll()
        out = exporter.metrics()
    assert value(out, "buddy_up", workspace="labs") == 0
    assert value(out, "buddy_up", workspace="acme") == 1
    assert value(out, "buddy_action_last_execution_status", action_id="1", status="FAILED") == 1
    assert value(out, "buddy_action_poll_success", action_id="2") == 0
    assert value(out, "buddy_exporter_last_success_timestamp_seconds", workspace="acme") is not None


def test_a_second_buddy_installation(run_exporter: Start) -> None:
    cloud = Simulator(token=TOKEN)
    cloud.add_action("acme", "shop", 1, 1, "Build")
    onprem = Simulator(token="onprem-token", base_path="/api")
    onprem.add_action("factory", "plant", 7, 70, "Flash firmware")
    with cloud, onprem:
        data = cfg(cloud, [{"workspace": "acme"}, {"workspace": "factory"}],
                   workspaces=[{"workspace": "factory", "api_url": onprem.url, "token": "onprem-token"}])  # fmt: skip
        out = run_exporter(data).metrics()
    assert action_ids(out) == {1, 70}
    assert (
        onprem.request_count("^/api/workspaces/factory") > 0 and cloud.request_count("factory") == 0
    )


@pytest.mark.parametrize("total", [1, 2, 3])
def test_shards_together_export_exactly_the_unsharded_series(
    company: Simulator, run_exporter: Start, total: int
) -> None:
    def buddy_series(text: str) -> set[Any]:
        return {k for k in samples(text) if k[0].startswith(("buddy_action_", "buddy_pipeline_"))}

    with company:
        whole = buddy_series(run_exporter(cfg(company, [{"workspace": "acme"}])).metrics())
        parts = []
        for shard in range(total):
            out = run_exporter(
                cfg(
                    company,
                    [{"workspace": "acme"}],
                    sharding={"shard": shard, "total_shards": total},
                )
            ).metrics()
            assert value(out, "buddy_exporter_shard_ordinal") == shard
            assert value(out, "buddy_exporter_total_shards") == total
            parts.append(buddy_series(out))
    assert set().union(*parts) == whole
    assert sum(len(p) for p in parts) == len(whole)  # no overlap
    if total > 1:
        assert all(parts), "every shard got some pipelines"


def test_failure_logs_name_the_object(
    company: Simulator, run_exporter: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with company:
        exporter = run_exporter(cfg(company, [{"workspace": "acme"}]))
        company.add_fault(Fault(path=r"/pipelines/4/actions/10$", status=502))
        exporter.poll()
        exporter.poll()
        company.clear_faults()
        exporter.poll()
    failures = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert failures == [
        "fetching action workspace=acme project=project-0001 pipeline_id=4 action_id=10 failed "
        "(server_error): HTTP 502: Simulated HTTP 502"
    ]  # once, not every cycle
    assert any("action_id=10 recovered" in r.getMessage() for r in caplog.records)


def test_mass_failure_logs_a_few_lines_then_a_sum(
    company: Simulator, run_exporter: Start, caplog: pytest.LogCaptureFixture
) -> None:
    with company:
        exporter = run_exporter(cfg(company, [{"workspace": "acme"}]))
        company.add_fault(Fault(path=r"/actions/\d+$", status=502))
        caplog.clear()
        exporter.poll()
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([line for line in lines if line.startswith("fetching action")]) == 5
    assert "13 more fetches failed (server_error) in this cycle" in lines


def test_deleted_action_is_not_asked_for_again_before_discovery(
    company: Simulator, run_exporter: Start
) -> None:
    with company:
        exporter = run_exporter(
            cfg(company, [{"workspace": "acme"}], poll={"discovery_interval_seconds": 3600})
        )
        company.remove_action("acme", "project-0000", 1, 1)
        exporter.poll()
        exporter.poll()
        gets = company.request_count(r"/pipelines/1/actions/1$")
        out = exporter.metrics()
    assert gets == 2  # the first cycle's GET, and the one that answered 404; none after
    assert value(out, "buddy_exporter_errors_total", reason="not_found") == 1
    assert 1 not in action_ids(out)


def test_action_list_of_exactly_one_page_that_ignores_pagination(run_exporter: Start) -> None:
    sim = Simulator(token=TOKEN, list_actions="full")
    for i in range(1, 31):  # exactly per_page items, and page 2 is the same list again
        sim.add_action("acme", "shop", 1, i, f"Step {i}")
    with sim:
        out = run_exporter(
            cfg(
                sim,
                [{"workspace": "acme", "project": "shop"}],
                buddy={"fetch_mode": "list", "per_page": 30},
            )
        ).metrics()
    assert action_ids(out) == set(range(1, 31))
    assert value(out, "buddy_up", workspace="acme") == 1
