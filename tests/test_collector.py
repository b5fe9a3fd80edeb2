"""The collector: a snapshot in, exposition out, parsed back as users would see it."""

from __future__ import annotations

import dataclasses
import gzip

from conftest import find, value
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import StatusSeries
from exporter.models import KNOWN_STATUSES
from exporter.render import Exposition, Format, RenderOptions, render
from exporter.snapshot import (
    ActionKey,
    ActionRecord,
    ActionValues,
    PipelineKey,
    PipelineRecord,
    PipelineValues,
    Snapshot,
    WorkspaceRecord,
)

KEY = ActionKey("acme", "shop", 1, 101)
LABELS = {"workspace": "acme", "project": "shop", "pipeline_id": "1", "pipeline": "Deploy",
          "action_id": "101", "action": "Build"}  # fmt: skip
VALUES = ActionValues(status="FAILED", action_type="BUILD", trigger_time="ON_EVERY_EXECUTION",
                      run_next="WAIT_ON_SUCCESS", url="https://app.buddy.works/a/b", retries=2.0,
                      retry_interval=30.0, timeout=600.0, disabled=False, ignore_errors=True)  # fmt: skip


def snapshot(*records: ActionRecord, **kw: object) -> Snapshot:
    return Snapshot(actions=records, completed=True, **kw)  # type: ignore[arg-type]


def text(snap: Snapshot, status_series: StatusSeries = StatusSeries.ALL) -> str:
    return render(snap, RenderOptions(60, status_series), Format.TEXT).decode()


def test_every_action_metric_has_the_values_and_labels() -> None:
    out = text(snapshot(ActionRecord(KEY, "Deploy", "Build", VALUES, True, 1700000000.0)))
    assert value(out, "buddy_action_retries", **LABELS) == 2
    assert value(out, "buddy_action_retry_interval_seconds", **LABELS) == 30
    assert value(out, "buddy_action_timeout_seconds", **LABELS) == 600
    assert value(out, "buddy_action_disabled", **LABELS) == 0
    assert value(out, "buddy_action_ignore_errors", **LABELS) == 1
    assert value(out, "buddy_action_poll_success", **LABELS) == 1
    assert value(out, "buddy_action_last_success_timestamp_seconds", **LABELS) == 1700000000
    info = find(out, "buddy_action_info", **LABELS)
    assert info == [({**LABELS, "action_type": "BUILD", "trigger_time": "ON_EVERY_EXECUTION",
                      "run_next": "WAIT_ON_SUCCESS", "url": "https://app.buddy.works/a/b"}, 1.0)]  # fmt: skip


def test_status_is_a_state_set_with_exactly_one_series_at_1() -> None:
    out = text(snapshot(ActionRecord(KEY, "Deploy", "Build", VALUES, True, 1.0)))
    series = find(out, "buddy_action_last_execution_status", **LABELS)
    assert sorted(labels["status"] for labels, _ in series) == sorted(KNOWN_STATUSES)
    assert [labels["status"] for labels, v in series if v == 1] == ["FAILED"]


def test_unknown_status_gets_its_own_series_at_1() -> None:
    values = dataclasses.replace(VALUES, status="BRAND_NEW")
    out = text(snapshot(ActionRecord(KEY, "Deploy", "Build", values, True, 1.0)))
    series = find(out, "buddy_action_last_execution_status", **LABELS)
    assert len(series) == len(KNOWN_STATUSES) + 1
    assert [labels["status"] for labels, v in series if v == 1] == ["BRAND_NEW"]


def test_current_mode_exports_only_the_state_at_1() -> None:
    out = text(
        snapshot(ActionRecord(KEY, "Deploy", "Build", VALUES, True, 1.0)), StatusSeries.CURRENT
    )
    assert find(out, "buddy_action_last_execution_status", **LABELS) == [
        ({**LABELS, "status": "FAILED"}, 1.0)
    ]


def test_unknown_values_give_no_series_not_zero() -> None:
    empty = ActionValues(*([None] * len(ActionValues.__slots__)))
    out = text(snapshot(ActionRecord(KEY, "Deploy", "Build", empty, True, 1.0)))
    for name in (
        "buddy_action_last_execution_status",
        "buddy_action_retries",
        "buddy_action_timeout_seconds",
        "buddy_action_retry_interval_seconds",
        "buddy_action_disabled",
        "buddy_action_ignore_errors",
    ):
        assert find(out, name) == [], name
    assert value(out, "buddy_action_poll_success", **LABELS) == 1


def test_never_fetched_target_shows_poll_success_0_with_empty_names() -> None:
    out = text(Snapshot(actions=(ActionRecord(KEY, "", "", None, False, None),),
                        workspaces=(WorkspaceRecord("acme", False, None),)))  # fmt: skip
    assert find(out, "buddy_action_poll_success") == [
        ({**LABELS, "pipeline": "", "action": ""}, 0.0)
    ]
    assert find(out, "buddy_action_last_success_timestamp_seconds") == []
    assert value(out, "buddy_up", workspace="acme") == 0
    assert find(out, "buddy_exporter_last_success_timestamp_seconds") == []


def test_self_metrics() -> None:
    snap = snapshot(
        workspaces=(WorkspaceRecord("acme", True, 1700000000.0, 42, 1000), WorkspaceRecord("labs", False, None)),
        poll_duration=0.25, last_poll=1700000000.0, cycle_requests=17,
        requests=(("/x", "200", 5), ("/x", "error", 1)), errors=(("timeout", 3),),
        targets=(("action", 3), ("pipeline", 2), ("project", 1)), shard=1, total_shards=3,
    )  # fmt: skip
    out = text(snap)
    assert value(out, "buddy_up", workspace="acme") == 1
    assert value(out, "buddy_up", workspace="labs") == 0
    assert (
        value(out, "buddy_exporter_last_success_timestamp_seconds", workspace="acme") == 1700000000
    )
    assert value(out, "buddy_exporter_last_success_timestamp_seconds", workspace="labs") is None
    assert value(out, "buddy_exporter_poll_duration_seconds") == 0.25
    assert value(out, "buddy_exporter_last_poll_timestamp_seconds") == 1700000000
    assert value(out, "buddy_exporter_cycle_requests") == 17
    assert value(out, "buddy_exporter_api_requests_total", endpoint="/x", code="200") == 5
    assert value(out, "buddy_exporter_api_requests_total", endpoint="/x", code="error") == 1
    assert value(out, "buddy_exporter_api_rate_limit_remaining", workspace="acme") == 42
    assert value(out, "buddy_exporter_api_rate_limit_limit", workspace="acme") == 1000
    assert value(out, "buddy_exporter_errors_total", reason="timeout") == 3
    assert value(out, "buddy_exporter_targets", kind="action") == 3
    assert value(out, "buddy_exporter_targets", kind="project") == 1
    assert value(out, "buddy_exporter_shard_ordinal") == 1
    assert value(out, "buddy_exporter_total_shards") == 3
    assert find(out, "buddy_exporter_build_info")[0][1] == 1


def test_rate_limit_gauges_absent_until_seen() -> None:
    out = text(snapshot(workspaces=(WorkspaceRecord("acme", True, 1.0),)))
    assert find(out, "buddy_exporter_api_rate_limit_remaining") == []
    assert find(out, "buddy_exporter_api_rate_limit_limit") == []


def test_pipeline_metrics() -> None:
    key = PipelineKey("acme", "shop", 1)
    labels = {"workspace": "acme", "project": "shop", "pipeline_id": "1", "pipeline": "Deploy"}
    record = PipelineRecord(
        key, "Deploy", PipelineValues("FAILED", False, True, "https://x/p/1"), 1.0
    )
    out = text(snapshot(pipelines=(record,)))
    series = find(out, "buddy_pipeline_last_execution_status", **labels)
    assert len(series) == len(KNOWN_STATUSES)
    assert [lab["status"] for lab, v in series if v == 1] == ["FAILED"]
    assert value(out, "buddy_pipeline_disabled", **labels) == 0
    assert value(out, "buddy_pipeline_paused", **labels) == 1
    assert find(out, "buddy_pipeline_info", **labels) == [({**labels, "url": "https://x/p/1"}, 1.0)]


def test_pipeline_unknown_values_give_no_series() -> None:
    record = PipelineRecord(
        PipelineKey("acme", "shop", 1), "Deploy", PipelineValues(None, None, None, None), 1.0
    )
    out = text(snapshot(pipelines=(record,)))
    for name in (
        "buddy_pipeline_last_execution_status",
        "buddy_pipeline_disabled",
        "buddy_pipeline_paused",
    ):
        assert find(out, name) == [], name
    assert len(find(out, "buddy_pipeline_info")) == 1


def test_help_text_names_the_poll_interval() -> None:
    out = text(snapshot(ActionRecord(KEY, "Deploy", "Build", VALUES, True, 1.0)))
    helps = {f.name: f.documentation for f in text_string_to_metric_families(out)}
    assert "from a background poll every 60s" in helps["buddy_action_timeout_seconds"]


def test_label_values_are_escaped() -> None:
    record = ActionRecord(KEY, 'Deploy "prod"\n', "Build\\x", VALUES, True, 1.0)
    out = text(snapshot(record))
    assert find(out, "buddy_action_poll_success")[0][0]["pipeline"] == 'Deploy "prod"\n'


def without_process_metrics(body: bytes) -> list[bytes]:
    # process_* values move between two renders; everything else must be equal
    return [line for line in body.split(b"\n") if b"process_" not in line]


def test_cached_formats_match_a_fresh_render_and_gzip_decompresses() -> None:
    snap = snapshot(ActionRecord(KEY, "Deploy", "Build", VALUES, True, 1.0))
    exposition = Exposition(snap, RenderOptions(60))
    for fmt in Format:
        plain = exposition.get(fmt, False)
        assert gzip.decompress(exposition.get(fmt, True)) == plain
        fresh = render(snap, RenderOptions(60), fmt)
        assert without_process_metrics(plain) == without_process_metrics(fresh)
    assert exposition.get(Format.OPENMETRICS, False).endswith(b"# EOF\n")
