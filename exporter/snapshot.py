"""The immutable snapshot of everything the exporter knows, swapped whole each cycle."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, order=True)
class PipelineKey:
    """Identifies one pipeline across cycles."""

    workspace: str
    project: str
    pipeline_id: int


@dataclass(frozen=True, slots=True, order=True)
class ActionKey:
    """Identifies one action across cycles."""

    workspace: str
    project: str
    pipeline_id: int
    action_id: int

    @property
    def pipeline_key(self) -> PipelineKey:
        return PipelineKey(self.workspace, self.project, self.pipeline_id)


@dataclass(frozen=True, slots=True)
class ActionValues:
    """The metric values of one action, from its last good fetch; ``None`` means unknown."""

    status: str | None
    action_type: str | None
    trigger_time: str | None
    run_next: str | None
    url: str | None
    retries: float | None
    retry_interval: float | None
    timeout: float | None
    disabled: bool | None
    ignore_errors: bool | None


@dataclass(frozen=True, slots=True)
class ActionRecord:
    """One configured or discovered action as the collector sees it."""

    key: ActionKey
    pipeline: str
    action: str
    values: ActionValues | None
    poll_success: bool
    last_success: float | None


@dataclass(frozen=True, slots=True)
class PipelineValues:
    """The metric values of one pipeline; ``None`` means unknown."""

    status: str | None
    disabled: bool | None
    paused: bool | None
    url: str | None


@dataclass(frozen=True, slots=True)
class PipelineRecord:
    """One discovered pipeline."""

    key: PipelineKey
    name: str
    values: PipelineValues | None
    last_success: float | None


@dataclass(frozen=True, slots=True)
class WorkspaceRecord:
    """Health of one workspace's polling."""

    workspace: str
    up: bool
    last_success: float | None
    rate_limit_remaining: float | None = None
    rate_limit_limit: float | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What ``/metrics`` shows; built by the poller, read by the collector."""

    actions: tuple[ActionRecord, ...] = ()
    pipelines: tuple[PipelineRecord, ...] = ()
    workspaces: tuple[WorkspaceRecord, ...] = ()
    completed: bool = False
    poll_duration: float | None = None
    last_poll: float | None = None
    cycle_requests: int | None = None
    requests: tuple[tuple[str, str, int], ...] = ()
    errors: tuple[tuple[str, int], ...] = ()
    targets: tuple[tuple[str, int], ...] = ()
    shard: int = 0
    total_shards: int = 1
    config_reload_successful: bool = True
    config_reload_success_timestamp: float | None = None
    problems: tuple[str, ...] = ()  # what failed in the last cycle, one line per reason
