"""Turns a snapshot into Prometheus metric families; never calls Buddy.

Series exist only for what the snapshot holds, so objects that are gone vanish
by construction. A value that is unknown (null, missing, stale) gives no series.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from exporter import __version__
from exporter.config import StatusSeries
from exporter.models import KNOWN_STATUSES
from exporter.snapshot import Snapshot

ACTION_LABELS = ("workspace", "project", "pipeline_id", "pipeline", "action_id", "action")
PIPELINE_LABELS = ("workspace", "project", "pipeline_id", "pipeline")


def _flag(value: bool) -> float:
    return 1.0 if value else 0.0


class SnapshotCollector(Collector):
    """Renders one snapshot.

    Sample::

        # HELP buddy_action_last_execution_status Status of the action's last execution ...
        # TYPE buddy_action_last_execution_status gauge
        buddy_action_last_execution_status{action="Run tests",action_id="301",pipeline="Build",
            pipeline_id="41",project="storefront",status="FAILED",workspace="acme"} 1.0
        buddy_action_retries{...} 2.0
        buddy_up 1.0
    """

    def __init__(
        self,
        snapshot: Snapshot,
        *,
        interval_seconds: float,
        status_series: StatusSeries = StatusSeries.ALL,
    ) -> None:
        self._snapshot = snapshot
        self._every = f"from a background poll every {interval_seconds:g}s"
        self._all_statuses = status_series is StatusSeries.ALL

    def collect(self) -> Iterator[Metric]:
        yield from self._action_families()
        yield from self._pipeline_families()
        yield from self._exporter_families()

    def _gauge(
        self, name: str, doc: str, labels: tuple[str, ...] = ACTION_LABELS
    ) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, f"{doc} ({self._every}).", labels=list(labels))

    def _scalar(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        family = self._gauge(name, doc, ())
        family.add_metric([], value)
        return family

    def _action_families(self) -> Iterator[Metric]:
        status = self._gauge(
            "buddy_action_last_execution_status",
            "Status of the action's last execution: 1 for the current status, 0 for the others",
            (*ACTION_LABELS, "status"),
        )
        retries = self._gauge(
            "buddy_action_retries", "Retries configured for the action (retry_count)"
        )
        retry_interval = self._gauge(
            "buddy_action_retry_interval_seconds", "Delay between the action's automatic retries"
        )
        timeout = self._gauge("buddy_action_timeout_seconds", "Timeout of the action")
        disabled = self._gauge("buddy_action_disabled", "1 if the action is disabled, else 0")
        ignore_errors = self._gauge(
            "buddy_action_ignore_errors", "1 if the action ignores errors, else 0"
        )
        info = self._gauge(
            "buddy_action_info",
            "Description of the action, always 1; url is its page in Buddy",
            (*ACTION_LABELS, "action_type", "trigger_time", "run_next", "url"),
        )
        success = self._gauge(
            "buddy_action_poll_success", "1 if the last fetch of this action succeeded, else 0"
        )
        last_success = self._gauge(
            "buddy_action_last_success_timestamp_seconds",
            "Unix time of the last successful fetch of this action",
        )
        # Samples are built directly, one label dict per action shared by its families:
        # add_metric() would zip a new dict for each of the ~23 samples of an action.
        for record in self._snapshot.actions:
            k = record.key
            labels = {
                "workspace": k.workspace,
                "project": k.project,
                "pipeline_id": str(k.pipeline_id),
                "pipeline": record.pipeline,
                "action_id": str(k.action_id),
                "action": record.action,
            }
            success.samples.append(Sample(success.name, labels, _flag(record.poll_success)))
            if record.last_success is not None:
                last_success.samples.append(Sample(last_success.name, labels, record.last_success))
            v = record.values
            if v is None:
                continue
            if v.status is not None:
                self._add_status(status, labels, v.status)
            for family, number in (
                (retries, v.retries),
                (retry_interval, v.retry_interval),
                (timeout, v.timeout),
            ):
                if number is not None:
                    family.samples.append(Sample(family.name, labels, number))
            for family, flag in ((disabled, v.disabled), (ignore_errors, v.ignore_errors)):
                if flag is not None:
                    family.samples.append(Sample(family.name, labels, _flag(flag)))
            info_labels = {
                **labels,
                "action_type": v.action_type or "",
                "trigger_time": v.trigger_time or "",
                "run_next": v.run_next or "",
                "url": v.url or "",
            }
            info.samples.append(Sample(info.name, info_labels, 1.0))
        yield from (status, retries, retry_interval, timeout, disabled, ignore_errors, info)
        yield from (success, last_success)

    def _add_status(self, family: GaugeMetricFamily, labels: dict[str, str], current: str) -> None:
        name, samples = family.name, family.samples
        if not self._all_statuses:
            samples.append(Sample(name, {**labels, "status": current}, 1.0))
            return
        for known in KNOWN_STATUSES:
            samples.append(
                Sample(name, {**labels, "status": known}, 1.0 if known == current else 0.0)
            )
        if current not in KNOWN_STATUSES:
            samples.append(Sample(name, {**labels, "status": current}, 1.0))

    def _pipeline_families(self) -> Iterator[Metric]:
        status = self._gauge(
            "buddy_pipeline_last_execution_status",
            "Status of the pipeline's last execution: 1 for the current status, 0 for the others",
            (*PIPELINE_LABELS, "status"),
        )
        disabled = self._gauge(
            "buddy_pipeline_disabled", "1 if the pipeline is disabled, else 0", PIPELINE_LABELS
        )
        paused = self._gauge(
            "buddy_pipeline_paused", "1 if the pipeline is paused, else 0", PIPELINE_LABELS
        )
        info = self._gauge(
            "buddy_pipeline_info",
            "Description of the pipeline, always 1; url is its page in Buddy",
            (*PIPELINE_LABELS, "url"),
        )
        for record in self._snapshot.pipelines:
            v = record.values
            if v is None:
                continue
            k = record.key
            labels = {
                "workspace": k.workspace,
                "project": k.project,
                "pipeline_id": str(k.pipeline_id),
                "pipeline": record.name,
            }
            if v.status is not None:
                self._add_status(status, labels, v.status)
            for family, flag in ((disabled, v.disabled), (paused, v.paused)):
                if flag is not None:
                    family.samples.append(Sample(family.name, labels, _flag(flag)))
            info.samples.append(Sample(info.name, {**labels, "url": v.url or ""}, 1.0))
        yield from (status, disabled, paused, info)

    def _exporter_families(self) -> Iterator[Metric]:
        snap = self._snapshot
        up = self._gauge(
            "buddy_up",
            "1 if the last poll cycle reached Buddy and every request for the workspace "
            "succeeded, else 0",
            ("workspace",),
        )
        last_success = self._gauge(
            "buddy_exporter_last_success_timestamp_seconds",
            "Unix time of the last poll cycle in which every request for the workspace succeeded",
            ("workspace",),
        )
        remaining = self._gauge(
            "buddy_exporter_api_rate_limit_remaining",
            "X-Rate-Limit-Remaining of the last Buddy response for the workspace's token",
            ("workspace",),
        )
        limit = self._gauge(
            "buddy_exporter_api_rate_limit_limit",
            "X-Rate-Limit-Limit of the last Buddy response for the workspace's token",
            ("workspace",),
        )
        for ws in snap.workspaces:
            up.add_metric([ws.workspace], _flag(ws.up))
            if ws.last_success is not None:
                last_success.add_metric([ws.workspace], ws.last_success)
            if ws.rate_limit_remaining is not None:
                remaining.add_metric([ws.workspace], ws.rate_limit_remaining)
            if ws.rate_limit_limit is not None:
                limit.add_metric([ws.workspace], ws.rate_limit_limit)
        yield from (up, last_success, remaining, limit)
        if snap.cycle_requests is not None:
            yield self._scalar(
                "buddy_exporter_cycle_requests",
                "Requests the last poll cycle made to the Buddy API",
                snap.cycle_requests,
            )
        targets = self._gauge(
            "buddy_exporter_targets",
            "Objects exported after discovery, filters and sharding, by kind",
            ("kind",),
        )
        for kind, count in snap.targets:
            targets.add_metric([kind], count)
        yield targets
        yield self._scalar(
            "buddy_exporter_shard_ordinal", "The shard this replica polls", snap.shard
        )
        yield self._scalar(
            "buddy_exporter_total_shards",
            "How many shards the pipelines are split into",
            snap.total_shards,
        )
        if snap.poll_duration is not None:
            yield self._scalar(
                "buddy_exporter_poll_duration_seconds",
                "Wall time of the last poll cycle",
                snap.poll_duration,
            )
        if snap.last_poll is not None:
            yield self._scalar(
                "buddy_exporter_last_poll_timestamp_seconds",
                "Unix time when the last poll cycle ended",
                snap.last_poll,
            )
        requests = CounterMetricFamily(
            "buddy_exporter_api_requests",
            "Requests made to the Buddy API, by endpoint template and HTTP status "
            '(code="error" when no response came back).',
            labels=["endpoint", "code"],
        )
        for endpoint, code, count in snap.requests:
            requests.add_metric([endpoint, code], count)
        yield requests
        errors = CounterMetricFamily(
            "buddy_exporter_errors",
            "Failed fetches and bad response fields, by reason.",
            labels=["reason"],
        )
        for reason, count in snap.errors:
            errors.add_metric([reason], count)
        yield errors
        yield self._scalar(
            "buddy_exporter_config_last_reload_successful",
            "1 if the last configuration reload succeeded (or none was tried), else 0",
            _flag(snap.config_reload_successful),
        )
        if snap.config_reload_success_timestamp is not None:
            yield self._scalar(
                "buddy_exporter_config_last_reload_success_timestamp_seconds",
                "Unix time of the last successful configuration load",
                snap.config_reload_success_timestamp,
            )
        build = GaugeMetricFamily(
            "buddy_exporter_build_info", "Version of buddy-exporter, always 1.", labels=["version"]
        )
        build.add_metric([__version__], 1.0)
        yield build
