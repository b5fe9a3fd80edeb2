"""The poll cycle: walk every target's scope, build a new snapshot, publish it.

A target names a scope (a workspace, a project, a pipeline or one action); what
it leaves out is discovered through the list endpoints. Projects are listed on
the discovery interval; pipelines, and in ``list`` mode actions, are listed
every cycle, since those listings carry the statuses anyway.

Errors stop here: a failed request becomes ``poll_success 0`` and a count by
reason, a listing that failed removes nothing, and the last good values are
kept until ``stale_after_seconds``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, TypeVar

from exporter.client import (
    ACTIONS_ENDPOINT,
    PIPELINE_ENDPOINT,
    PIPELINES_ENDPOINT,
    PROJECTS_ENDPOINT,
    ApiError,
    BuddyClient,
    Reason,
    path_for,
    printable,
)
from exporter.config import FetchMode, Target
from exporter.models import (
    ACTION_METRIC_FIELDS,
    Action,
    InvalidObject,
    Pipeline,
    Project,
    normalize_status,
)
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

log = logging.getLogger(__name__)
T = TypeVar("T")
#: A bad day at Buddy fails thousands of fetches at once: log a few, then sum up.
LOG_LINES_PER_REASON = 5


def action_values(action: Action) -> ActionValues:
    """The metric values of a parsed action."""
    return ActionValues(
        status=normalize_status(action.last_execution_status),
        action_type=action.type,
        trigger_time=action.trigger_time,
        run_next=action.run_next,
        url=action.html_url,
        retries=action.retry_count,
        retry_interval=action.retry_interval,
        timeout=action.timeout,
        disabled=action.disabled,
        ignore_errors=action.ignore_errors,
    )


def pipeline_values(pipeline: Pipeline) -> PipelineValues:
    return PipelineValues(
        status=normalize_status(pipeline.last_execution_status),
        disabled=pipeline.disabled,
        paused=pipeline.paused,
        url=pipeline.html_url,
    )


def shard_of(key: PipelineKey, total_shards: int) -> int:
    """The shard a pipeline belongs to: stable across processes and restarts."""
    return zlib.crc32(f"{key.workspace}/{key.project}/{key.pipeline_id}".encode()) % total_shards


def accepts(target: Target, kind: str, value: str | None) -> bool:
    """Whether ``value`` passes the target's include and exclude filters for ``kind``."""
    include = getattr(target.include, kind)
    exclude = getattr(target.exclude, kind)
    text = value or ""
    if include is not None and not re.fullmatch(include, text):
        return False
    return not (exclude is not None and re.fullmatch(exclude, text))


def describe(key: ActionKey | PipelineKey) -> str:
    """How log lines name an object."""
    text = f"workspace={key.workspace} project={key.project} pipeline_id={key.pipeline_id}"
    return text + (f" action_id={key.action_id}" if isinstance(key, ActionKey) else "")


def initial_snapshot(targets: Sequence[Target], total_shards: int = 1, shard: int = 0) -> Snapshot:
    """Before the first cycle: configured actions and workspaces known, nothing fetched."""
    keys = sorted(
        {
            k
            for k in (_configured_key(t) for t in targets)
            if k is not None and shard_of(k.pipeline_key, total_shards) == shard
        }
    )
    return Snapshot(
        errors=_all_reasons(Counter()),
        actions=tuple(ActionRecord(k, "", "", None, False, None) for k in keys),
        workspaces=tuple(
            WorkspaceRecord(w, False, None) for w in sorted({t.workspace for t in targets})
        ),
        shard=shard,
        total_shards=total_shards,
    )


def _configured_key(target: Target) -> ActionKey | None:
    if target.action_id is None or target.pipeline_id is None or target.project is None:
        return None
    return ActionKey(target.workspace, target.project, target.pipeline_id, target.action_id)


class _Outcome(Enum):
    KEPT = 1  # the fetch failed: keep the previous values until stale
    GONE = 0  # the API says it no longer exists


@dataclass(frozen=True, slots=True)
class _FreshAction:
    pipeline: str
    action: str
    values: ActionValues


@dataclass(frozen=True, slots=True)
class _FreshPipeline:
    name: str
    values: PipelineValues


@dataclass
class _Walk:
    """What one cycle found, all targets merged; a fresh result beats a failed one."""

    actions: dict[ActionKey, _FreshAction | _Outcome] = field(default_factory=dict)
    pipelines: dict[PipelineKey, _FreshPipeline | _Outcome] = field(default_factory=dict)
    projects: set[tuple[str, str]] = field(default_factory=set)

    def action(self, key: ActionKey, outcome: _FreshAction | _Outcome) -> None:
        if _rank(outcome) > _rank(self.actions.get(key)):
            self.actions[key] = outcome

    def pipeline(self, key: PipelineKey, outcome: _FreshPipeline | _Outcome) -> None:
        if _rank(outcome) > _rank(self.pipelines.get(key)):
            self.pipelines[key] = outcome


def _prefixes(key: ActionKey | PipelineKey) -> tuple[tuple[object, ...], ...]:
    """The scopes an object is under: its workspace, its project, its pipeline."""
    return (
        (key.workspace,),
        (key.workspace, key.project),
        (key.workspace, key.project, key.pipeline_id),
    )


def _rank(outcome: object) -> int:
    if outcome is None:
        return -1
    if isinstance(outcome, _Outcome):
        return outcome.value
    return 2


@dataclass(frozen=True, slots=True)
class _ListedAction:
    action: Action
    complete: bool  # the list item carries every field the metrics use


MAX_PROBLEMS = 5
MAX_PROBLEM_CHARS = 300


def problems_of(failures: Sequence[ApiError]) -> tuple[str, ...]:
    """One line per failure reason of a cycle (most frequent first), with its first detail."""
    by_reason: dict[str, list[ApiError]] = {}
    for failure in failures:
        by_reason.setdefault(failure.reason, []).append(failure)
    lines = []
    for reason, errors in sorted(by_reason.items(), key=lambda item: -len(item[1])):
        detail = errors[0].detail
        if len(detail) > MAX_PROBLEM_CHARS:
            detail = detail[: MAX_PROBLEM_CHARS - 3] + "..."
        lines.append(f"{reason}: {detail} ({len(errors)} failed fetch(es))")
    return tuple(lines[:MAX_PROBLEMS])


class _Fetcher:
    """One cycle's requests: memoised (two targets never cause the same request twice),
    bounded in concurrency, failures counted and logged once per object."""

    def __init__(
        self,
        clients: Mapping[str, BuddyClient],
        semaphore: asyncio.Semaphore,
        per_page: int,
        errors: Counter[str],
        failing: dict[str, str],
        noted: set[str],
    ) -> None:
        self._clients = clients
        self._semaphore = semaphore
        self._per_page = per_page
        self._errors = errors
        self._failing = failing
        self._noted = noted
        self.noted_now: set[str] = set()
        self._memo: dict[str, asyncio.Task[Any]] = {}
        self.failed_workspaces: set[str] = set()
        self.succeeded: set[str] = set()
        self._logged: Counter[str] = Counter()
        self.unlogged: Counter[str] = Counter()
        self.failures: list[ApiError] = []

    def requested(self, what: str) -> bool:
        return what in self._memo

    async def _once(
        self, workspace: str, what: str, call: Callable[[], Coroutine[Any, Any, T]]
    ) -> T | ApiError:
        task = self._memo.get(what)
        if task is None:
            task = asyncio.ensure_future(self._guarded(workspace, what, call))
            self._memo[what] = task
        result: T | ApiError = await task
        return result

    async def _guarded(
        self, workspace: str, what: str, call: Callable[[], Coroutine[Any, Any, T]]
    ) -> T | ApiError:
        async with self._semaphore:
            try:
                result = await call()
            except ApiError as exc:
                self._fail(workspace, what, exc)
                return exc
            except Exception as exc:  # a bug must cost one object, not the cycle
                log.debug("unexpected error fetching %s", what, exc_info=True)
                error = ApiError(
                    Reason.INTERNAL, f"unexpected {type(exc).__name__}: {printable(str(exc))}"
                )
                self._fail(workspace, what, error)
                return error
        self.succeeded.add(what)
        return result

    def _note(self, what: str, message: str) -> None:
        """Log a problem with an object once, not on every cycle while it lasts."""
        line = f"{message} of {what}"
        self.noted_now.add(line)
        if line not in self._noted:
            self._noted.add(line)
            log.warning("%s", line)

    def _fail(self, workspace: str, what: str, exc: ApiError) -> None:
        self._errors[exc.reason] += 1
        self.failures.append(exc)
        if exc.reason != Reason.NOT_FOUND:
            self.failed_workspaces.add(workspace)
        if self._failing.get(what) != exc.reason:
            self._failing[what] = exc.reason
            if self._logged[exc.reason] < LOG_LINES_PER_REASON:
                self._logged[exc.reason] += 1
                log.warning("fetching %s failed (%s): %s", what, exc.reason, exc.detail)
            else:
                self.unlogged[exc.reason] += 1

    def _parse_items(self, what: str, items: Iterable[Any], model: type[T]) -> list[T]:
        parsed = []
        seen: set[object] = set()
        for item in items:
            problems: list[str] = []
            try:
                obj = model.parse(item, problems)  # type: ignore[attr-defined]
            except InvalidObject as exc:
                self._errors[Reason.INVALID_RESPONSE] += 1
                self._note(what, f"skipping an unusable item ({exc})")
                continue
            identity = getattr(obj, "id", None) or getattr(obj, "name", None)
            if identity in seen:
                self._errors[Reason.INVALID_RESPONSE] += 1
                self._note(what, f"skipping a second item with the id {identity!r}")
                continue
            seen.add(identity)
            self._report(what, problems)
            parsed.append(obj)
        return parsed

    def _report(self, what: str, problems: list[str]) -> None:
        for problem in problems:
            self._errors[Reason.INVALID_FIELD] += 1
            self._note(what, f"ignoring a bad field ({problem})")

    async def projects(self, ws: str, closed: bool) -> list[Project] | ApiError:
        what = f"the projects of workspace={ws}"
        params = None if closed else {"status": "ACTIVE"}

        async def call() -> list[Project]:
            path = path_for(PROJECTS_ENDPOINT, workspace=ws)
            items = await self._clients[ws].list_all(
                PROJECTS_ENDPOINT, path, "projects", self._per_page, params
            )
            return self._parse_items(what, items, Project)

        return await self._once(ws, what + f" closed={closed}", call)

    async def pipelines(self, ws: str, project: str) -> list[Pipeline] | ApiError:
        what = f"the pipelines of workspace={ws} project={project}"

        async def call() -> list[Pipeline]:
            path = path_for(PIPELINES_ENDPOINT, workspace=ws, project=project)
            items = await self._clients[ws].list_all(
                PIPELINES_ENDPOINT, path, "pipelines", self._per_page
            )
            return self._parse_items(what, items, Pipeline)

        return await self._once(ws, what, call)

    async def pipeline(self, key: PipelineKey) -> Pipeline | ApiError:
        what = f"pipeline {describe(key)}"

        async def call() -> Pipeline:
            path = path_for(
                PIPELINE_ENDPOINT,
                workspace=key.workspace,
                project=key.project,
                pipeline_id=key.pipeline_id,
            )
            data = await self._clients[key.workspace].get_json(PIPELINE_ENDPOINT, path)
            return self._parse_one(what, data, Pipeline, key.pipeline_id)

        return await self._once(key.workspace, what, call)

    async def actions(self, key: PipelineKey) -> list[_ListedAction] | ApiError:
        what = f"the actions of {describe(key)}"

        async def call() -> list[_ListedAction]:
            path = path_for(
                ACTIONS_ENDPOINT,
                workspace=key.workspace,
                project=key.project,
                pipeline_id=key.pipeline_id,
            )
            items = await self._clients[key.workspace].list_all(
                ACTIONS_ENDPOINT, path, "actions", self._per_page, documented_pages=False
            )
            complete = [isinstance(i, dict) and i.keys() >= ACTION_METRIC_FIELDS for i in items]
            parsed: list[_ListedAction] = []
            seen: set[int] = set()
            for item, is_complete in zip(items, complete, strict=True):
                for action in self._parse_items(what, [item], Action):
                    if action.id in seen:
                        self._errors[Reason.INVALID_RESPONSE] += 1
                        self._note(what, f"skipping a second item with the id {action.id!r}")
                        continue
                    seen.add(action.id)
                    parsed.append(_ListedAction(action, is_complete))
            return parsed

        return await self._once(key.workspace, what, call)

    async def action(self, key: ActionKey) -> Action | ApiError:
        what = f"action {describe(key)}"

        async def call() -> Action:
            data = await self._clients[key.workspace].get_action(
                key.workspace, key.project, key.pipeline_id, key.action_id
            )
            return self._parse_one(what, data, Action, key.action_id)

        return await self._once(key.workspace, what, call)

    def _parse_one(self, what: str, data: Any, model: type[T], expected_id: int) -> T:
        problems: list[str] = []
        try:
            parsed: T = model.parse(data, problems)  # type: ignore[attr-defined]
        except InvalidObject as exc:
            raise ApiError(Reason.INVALID_RESPONSE, f"unusable object: {exc}", 200) from None
        got = getattr(parsed, "id", None)
        if got != expected_id:
            raise ApiError(
                Reason.INVALID_RESPONSE, f"asked for id {expected_id}, got an object with id {got}"
            )
        self._report(what, problems)
        return parsed


@dataclass(frozen=True, slots=True)
class _IndexedAction:
    """What a listing told about an action, for filtering before a GET."""

    id: int
    name: str | None
    type: str | None
    disabled: bool | None


class Poller:
    """Runs poll cycles over the configured targets."""

    def __init__(
        self,
        targets: Sequence[Target],
        clients: Mapping[str, BuddyClient],
        publish: Callable[[Snapshot], Awaitable[None]],
        *,
        interval_seconds: float,
        stale_after_seconds: float,
        discovery_interval_seconds: float = 300.0,
        fetch_mode: FetchMode = FetchMode.AUTO,
        max_concurrency: int = 8,
        per_page: int = 30,
        shard: int = 0,
        total_shards: int = 1,
        clock: Callable[[], float] = time.time,
        errors: Counter[str] | None = None,
        retired_requests: Counter[tuple[str, str]] | None = None,
    ) -> None:
        self._targets = tuple(targets)
        self._clients = dict(clients)
        self._publish = publish
        self._interval = interval_seconds
        self._stale_after = stale_after_seconds
        self._discovery_interval = discovery_interval_seconds
        self._fetch_mode = fetch_mode
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._per_page = per_page
        self._shard = shard
        self._total_shards = total_shards
        self._clock = clock
        self._configured = {k for k in (_configured_key(t) for t in targets) if k is not None}
        self._errors: Counter[str] = Counter() if errors is None else errors
        self._retired_requests = Counter() if retired_requests is None else retired_requests
        self._failing: dict[str, str] = {}
        self._noted: set[str] = set()
        self._last_discovery: float | None = None
        self._cycles = 0
        self._under_index: (
            tuple[Snapshot, dict[tuple[object, ...], tuple[list[PipelineKey], list[ActionKey]]]]
            | None
        ) = None
        self._projects: dict[int, tuple[str, ...]] = {}
        self._action_index: dict[PipelineKey, tuple[_IndexedAction, ...]] = {}
        self._lists_complete: dict[str, bool] = {}
        self.snapshot = initial_snapshot(targets, total_shards, shard)

    def _in_shard(self, key: PipelineKey) -> bool:
        return self._total_shards == 1 or shard_of(key, self._total_shards) == self._shard

    async def poll_once(self) -> Snapshot:
        """One cycle; never raises."""
        started = time.monotonic()
        clients = {id(c): c for c in self._clients.values()}.values()
        requests_before = sum(c.request_total() for c in clients)
        try:
            now = self._clock()
            discover = (
                self._last_discovery is None
                or now - self._last_discovery >= self._discovery_interval
            )
            fetcher = _Fetcher(
                self._clients,
                self._semaphore,
                self._per_page,
                self._errors,
                self._failing,
                self._noted,
            )
            walk = _Walk()
            if discover:
                self._lists_complete = {}
            await asyncio.gather(
                *(
                    self._walk_target(i, t, fetcher, walk, discover)
                    for i, t in enumerate(self._targets)
                )
            )
            if discover:
                self._last_discovery = now
            self._forget_recovered(fetcher)
            now = self._clock()
            snapshot = self._build(walk, fetcher, now, time.monotonic() - started)
            snapshot = _with_requests(snapshot, clients, requests_before, self._retired_requests)
            self.snapshot = snapshot
            await self._publish(snapshot)
        except Exception:  # a bug must not stop polling; keep serving the last snapshot
            log.exception("poll cycle failed unexpectedly")
            return self.snapshot
        duration = snapshot.poll_duration or 0.0
        if duration > self._interval:
            log.warning(
                "poll cycle took %.2fs, longer than poll.interval_seconds=%g (%d requests); "
                "the next cycle starts late (cycles never overlap)",
                duration,
                self._interval,
                snapshot.cycle_requests or 0,
            )
        # The first cycle (with its discovery) is logged at info: it may take a while.
        (log.info if self._cycles == 0 else log.debug)(
            "poll cycle done in %.3fs: %d requests, %d actions, %d pipelines%s",
            duration,
            snapshot.cycle_requests or 0,
            len(snapshot.actions),
            len(snapshot.pipelines),
            " (with discovery)" if discover else "",
        )
        self._cycles += 1
        return snapshot

    def _forget_recovered(self, fetcher: _Fetcher) -> None:
        for reason, count in sorted(fetcher.unlogged.items()):
            log.warning("%d more fetches failed (%s) in this cycle", count, reason)
        recovered = [w for w in self._failing if w in fetcher.succeeded]
        for what in recovered[:LOG_LINES_PER_REASON]:
            log.info("%s recovered", what)
        if len(recovered) > LOG_LINES_PER_REASON:
            log.info("%d more objects recovered", len(recovered) - LOG_LINES_PER_REASON)
        for what in recovered:
            del self._failing[what]
        for what in [w for w in self._failing if not fetcher.requested(w)]:
            del self._failing[what]  # no longer polled: forget it
        self._noted &= fetcher.noted_now  # a problem that went away may be logged again

    # -- walking the scopes ----------------------------------------------------------
    async def _walk_target(
        self,
        index: int,
        target: Target,
        fetcher: _Fetcher,
        walk: _Walk,
        discover: bool,
    ) -> None:
        ws = target.workspace
        if target.scope == "action":
            key = _configured_key(target)
            assert key is not None
            if self._in_shard(key.pipeline_key):
                await self._fetch_action(target, key, None, fetcher, walk)
            return
        if target.scope == "pipeline":
            assert target.project is not None and target.pipeline_id is not None
            pkey = PipelineKey(ws, target.project, target.pipeline_id)
            if not self._in_shard(pkey):
                return
            walk.projects.add((ws, target.project))
            pipeline = await fetcher.pipeline(pkey)
            if isinstance(pipeline, ApiError):
                self._keep_under(walk, pipeline, ws, target.project, target.pipeline_id)
                return
            await self._walk_pipeline(target, pkey, pipeline, fetcher, walk, discover)
            return
        if target.scope == "project":
            assert target.project is not None
            projects: Sequence[str] = (target.project,)
        else:
            listed = await self._discover_projects(index, target, fetcher, discover)
            if listed is None:  # never listed successfully yet
                self._keep_under(walk, None, ws)
                return
            projects = listed
        await asyncio.gather(
            *(self._walk_project(target, ws, p, fetcher, walk, discover) for p in projects)
        )

    async def _discover_projects(
        self, index: int, target: Target, fetcher: _Fetcher, discover: bool
    ) -> tuple[str, ...] | None:
        cached = self._projects.get(index)
        if not discover and cached is not None:
            return cached
        listed = await fetcher.projects(target.workspace, target.include_closed_projects)
        if isinstance(listed, ApiError):
            return cached  # a listing that failed removes nothing
        names = tuple(
            p.name
            for p in listed
            if (target.include_closed_projects or (p.status or "ACTIVE").upper() == "ACTIVE")
            and accepts(target, "project", p.name)
        )
        self._projects[index] = names
        return names

    async def _walk_project(
        self,
        target: Target,
        ws: str,
        project: str,
        fetcher: _Fetcher,
        walk: _Walk,
        discover: bool,
    ) -> None:
        walk.projects.add((ws, project))
        pipelines = await fetcher.pipelines(ws, project)
        if isinstance(pipelines, ApiError):
            self._keep_under(walk, pipelines, ws, project)
            return
        tasks = []
        for pipeline in pipelines:
            pkey = PipelineKey(ws, project, pipeline.id)
            if self._in_shard(pkey) and accepts(target, "pipeline", pipeline.name):
                tasks.append(self._walk_pipeline(target, pkey, pipeline, fetcher, walk, discover))
        await asyncio.gather(*tasks)

    async def _walk_pipeline(
        self,
        target: Target,
        pkey: PipelineKey,
        pipeline: Pipeline,
        fetcher: _Fetcher,
        walk: _Walk,
        discover: bool,
    ) -> None:
        if pipeline.disabled and not target.include_disabled:
            return
        name = pipeline.name or ""
        walk.pipeline(pkey, _FreshPipeline(name, pipeline_values(pipeline)))
        mode = self._fetch_mode
        if mode is FetchMode.AUTO and not discover:
            # Between discoveries auto acts as list or get, by what the lists held last time.
            mode = FetchMode.LIST if self._lists_complete.get(pkey.workspace) else FetchMode.GET
        index = self._action_index.get(pkey)
        listed: list[_ListedAction] | None = None
        complete = False  # the listing carries every field the metrics use
        if mode is not FetchMode.GET or discover or index is None:
            result = await fetcher.actions(pkey)
            if isinstance(result, ApiError):
                self._keep_under(walk, result, pkey.workspace, pkey.project, pkey.pipeline_id)
                return
            listed = result
            index = tuple(
                _IndexedAction(x.action.id, x.action.name, x.action.type, x.action.disabled)
                for x in listed
            )
            self._action_index[pkey] = index
            complete = all(x.complete for x in listed)
            if self._fetch_mode is FetchMode.AUTO:
                self._lists_complete[pkey.workspace] = (
                    self._lists_complete.get(pkey.workspace, True) and complete
                )
        use_list = listed is not None and (
            mode is FetchMode.LIST or (mode is FetchMode.AUTO and complete)
        )
        if use_list:
            assert listed is not None
            for item in listed:
                if self._accepts_action(
                    target, item.action.name, item.action.type, item.action.disabled
                ):
                    key = ActionKey(pkey.workspace, pkey.project, pkey.pipeline_id, item.action.id)
                    walk.action(
                        key, _FreshAction(name, item.action.name or "", action_values(item.action))
                    )
            return
        await asyncio.gather(
            *(
                self._fetch_action(
                    target,
                    ActionKey(pkey.workspace, pkey.project, pkey.pipeline_id, entry.id),
                    name,
                    fetcher,
                    walk,
                )
                for entry in index
                if self._accepts_action(target, entry.name, entry.type, entry.disabled)
            )
        )

    def _accepts_action(
        self, target: Target, name: str | None, action_type: str | None, disabled: bool | None
    ) -> bool:
        if disabled and not target.include_disabled:
            return False
        return accepts(target, "action", name) and accepts(target, "action_type", action_type)

    async def _fetch_action(
        self,
        target: Target,
        key: ActionKey,
        pipeline_name: str | None,
        fetcher: _Fetcher,
        walk: _Walk,
    ) -> None:
        action = await fetcher.action(key)
        if isinstance(action, ApiError):
            gone = action.reason == Reason.NOT_FOUND
            walk.action(key, _Outcome.GONE if gone else _Outcome.KEPT)
            index = self._action_index.get(key.pipeline_key)
            if gone and index is not None:  # don't ask for it again before the next discovery
                self._action_index[key.pipeline_key] = tuple(
                    e for e in index if e.id != key.action_id
                )
            return
        if target.scope != "action" and not self._accepts_action(
            target, action.name, action.type, action.disabled
        ):
            return
        if pipeline_name is None:
            pipeline_name = action.pipeline.name if action.pipeline and action.pipeline.name else ""
        walk.action(key, _FreshAction(pipeline_name, action.name or "", action_values(action)))

    def _keep_under(
        self,
        walk: _Walk,
        error: ApiError | None,
        ws: str,
        project: str | None = None,
        pipeline_id: int | None = None,
    ) -> None:
        """A listing failed: keep what was known under it (a 404 means it is all gone)."""
        if error is not None and error.reason == Reason.NOT_FOUND:
            return

        prefix: tuple[object, ...] = (ws,)
        if project is not None:
            prefix = (ws, project) if pipeline_id is None else (ws, project, pipeline_id)
        pipelines, actions = self._previous_under().get(prefix, ((), ()))
        for pkey in pipelines:
            walk.pipeline(pkey, _Outcome.KEPT)
        for akey in actions:
            walk.action(akey, _Outcome.KEPT)

    def _previous_under(
        self,
    ) -> dict[tuple[object, ...], tuple[list[PipelineKey], list[ActionKey]]]:
        """The previous snapshot's keys by workspace, project and pipeline prefix.

        Built once per snapshot, on the first failed listing: a bad day fails many
        listings, and scanning every object for each of them would be quadratic.
        """
        if self._under_index is None or self._under_index[0] is not self.snapshot:
            index: dict[tuple[object, ...], tuple[list[PipelineKey], list[ActionKey]]] = {}
            for p in self.snapshot.pipelines:
                for prefix in _prefixes(p.key):
                    index.setdefault(prefix, ([], []))[0].append(p.key)
            for a in self.snapshot.actions:
                for prefix in _prefixes(a.key):
                    index.setdefault(prefix, ([], []))[1].append(a.key)
            self._under_index = (self.snapshot, index)
        return self._under_index[1]

    # -- the snapshot ------------------------------------------------------------------
    def _kept_values(self, values: T | None, last_success: float | None, now: float) -> T | None:
        if last_success is None or now - last_success > self._stale_after:
            return None
        return values

    def _build(self, walk: _Walk, fetcher: _Fetcher, now: float, duration: float) -> Snapshot:
        previous_actions = {r.key: r for r in self.snapshot.actions}
        actions: list[ActionRecord] = []
        for key in sorted(set(walk.actions) | self._configured_in_shard()):
            outcome = walk.actions.get(key, _Outcome.GONE)
            previous = previous_actions.get(key)
            if isinstance(outcome, _FreshAction):
                actions.append(
                    ActionRecord(key, outcome.pipeline, outcome.action, outcome.values, True, now)
                )
            elif outcome is _Outcome.KEPT and previous is not None:
                values = self._kept_values(previous.values, previous.last_success, now)
                actions.append(
                    ActionRecord(
                        key,
                        previous.pipeline,
                        previous.action,
                        values,
                        False,
                        previous.last_success,
                    )
                )
            elif key in self._configured:
                # Gone or never fetched: a configured target still shows poll_success 0.
                actions.append(ActionRecord(key, "", "", None, False, None))
        previous_pipelines = {r.key: r for r in self.snapshot.pipelines}
        pipelines: list[PipelineRecord] = []
        for pkey in sorted(walk.pipelines):
            p_outcome = walk.pipelines[pkey]
            p_previous = previous_pipelines.get(pkey)
            if isinstance(p_outcome, _FreshPipeline):
                pipelines.append(PipelineRecord(pkey, p_outcome.name, p_outcome.values, now))
            elif p_outcome is _Outcome.KEPT and p_previous is not None:
                kept = self._kept_values(p_previous.values, p_previous.last_success, now)
                pipelines.append(
                    PipelineRecord(pkey, p_previous.name, kept, p_previous.last_success)
                )
        live = {p.key for p in pipelines}
        for stale in [k for k in self._action_index if k not in live]:
            del self._action_index[stale]
        previous_ws = {w.workspace: w for w in self.snapshot.workspaces}
        workspaces = []
        for ws, client in sorted(self._clients.items()):
            up = ws not in fetcher.failed_workspaces
            before = previous_ws.get(ws)
            stats = client.stats()
            workspaces.append(
                WorkspaceRecord(
                    ws,
                    up,
                    now if up else (before.last_success if before else None),
                    stats.rate_limit_remaining,
                    stats.rate_limit_limit,
                )
            )
        return Snapshot(
            actions=tuple(actions),
            pipelines=tuple(pipelines),
            workspaces=tuple(workspaces),
            completed=True,
            poll_duration=duration,
            last_poll=now,
            errors=_all_reasons(self._errors),
            targets=(
                ("action", len(actions)),
                ("pipeline", len(pipelines)),
                ("project", len(walk.projects)),
            ),
            shard=self._shard,
            total_shards=self._total_shards,
            problems=problems_of(fetcher.failures),
        )

    def _configured_in_shard(self) -> set[ActionKey]:
        return {k for k in self._configured if self._in_shard(k.pipeline_key)}


def _all_reasons(errors: Counter[str]) -> tuple[tuple[str, int], ...]:
    """Every reason, 0 until it happens: a counter that exists from the start lets
    ``increase()`` see its first step."""
    return tuple(sorted({**dict.fromkeys(Reason.ALL, 0), **errors}.items()))


def _with_requests(
    snapshot: Snapshot,
    clients: Iterable[BuddyClient],
    requests_before: int,
    retired: Counter[tuple[str, str]],
) -> Snapshot:
    totals: defaultdict[tuple[str, str], int] = defaultdict(int, retired)
    made = 0
    for client in clients:
        made += client.request_total()
        for endpoint, code, count in client.stats().requests:
            totals[(endpoint, code)] += count
    return replace(
        snapshot,
        requests=tuple((e, c, n) for (e, c), n in sorted(totals.items())),
        cycle_requests=made - requests_before,
    )
