"""The poll cycle: fetch every target, build a new snapshot, publish it.

Errors stop here: each target's failure becomes ``poll_success 0`` and a count
by reason; the last good values are kept until ``stale_after_seconds``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from exporter.client import ApiError, BuddyClient, Reason
from exporter.config import Target
from exporter.models import Action, InvalidObject, normalize_status
from exporter.snapshot import ActionKey, ActionRecord, ActionValues, Snapshot

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Fetched:
    """A successful fetch of one action."""

    pipeline: str
    action: str
    values: ActionValues


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


def key_of(target: Target) -> ActionKey:
    return ActionKey(target.workspace, target.project, target.pipeline_id, target.action_id)


def describe(key: ActionKey) -> str:
    """How log lines name an action."""
    return (
        f"workspace={key.workspace} project={key.project} "
        f"pipeline_id={key.pipeline_id} action_id={key.action_id}"
    )


def initial_snapshot(keys: Iterable[ActionKey]) -> Snapshot:
    """Before the first cycle: every target known, none fetched."""
    return Snapshot(
        actions=tuple(ActionRecord(k, "", "", None, False, None) for k in sorted(set(keys)))
    )


class Poller:
    """Runs poll cycles over a fixed list of targets."""

    def __init__(
        self,
        targets: Sequence[Target],
        client: BuddyClient,
        publish: Callable[[Snapshot], Awaitable[None]],
        *,
        interval_seconds: float,
        stale_after_seconds: float,
        max_concurrency: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = tuple(sorted({key_of(t) for t in targets}))
        self._client = client
        self._publish = publish
        self._interval = interval_seconds
        self._stale_after = stale_after_seconds
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._clock = clock
        self._errors: Counter[str] = Counter()
        self._failing: dict[ActionKey, str] = {}
        self.snapshot = initial_snapshot(self._keys)

    async def poll_once(self) -> Snapshot:
        """One cycle; never raises."""
        started = time.monotonic()
        try:
            outcomes = await asyncio.gather(*(self._fetch(k) for k in self._keys))
            now = self._clock()
            previous = {r.key: r for r in self.snapshot.actions}
            records = [
                self._record(key, outcome, previous.get(key), now)
                for key, outcome in zip(self._keys, outcomes, strict=True)
            ]
            duration = time.monotonic() - started
            snapshot = Snapshot(
                actions=tuple(records),
                up=all(r.poll_success for r in records),
                completed=True,
                poll_duration=duration,
                last_poll=now,
                api=self._client.stats(),
                errors=tuple(sorted(self._errors.items())),
            )
            self.snapshot = snapshot
            await self._publish(snapshot)
        except Exception:  # a bug must not stop polling; keep serving the last snapshot
            log.exception("poll cycle failed unexpectedly")
            return self.snapshot
        if duration > self._interval:
            log.warning(
                "poll cycle took %.2fs, longer than poll.interval_seconds=%g; "
                "the next cycle starts late (cycles never overlap)",
                duration,
                self._interval,
            )
        log.debug("poll cycle done in %.3fs, %d actions", duration, len(records))
        return snapshot

    async def _fetch(self, key: ActionKey) -> Fetched | ApiError:
        async with self._semaphore:
            try:
                data = await self._client.get_action(
                    key.workspace, key.project, key.pipeline_id, key.action_id
                )
            except ApiError as exc:
                return exc
        problems: list[str] = []
        try:
            action = Action.parse(data, problems)
        except InvalidObject as exc:
            return ApiError(Reason.INVALID_RESPONSE, f"unusable action object: {exc}")
        for problem in problems:
            self._errors[Reason.INVALID_FIELD] += 1
            log.warning("ignoring bad field of action %s: %s", describe(key), problem)
        pipeline = action.pipeline.name if action.pipeline and action.pipeline.name else ""
        return Fetched(pipeline, action.name or "", action_values(action))

    def _record(
        self,
        key: ActionKey,
        outcome: Fetched | ApiError,
        previous: ActionRecord | None,
        now: float,
    ) -> ActionRecord:
        if isinstance(outcome, Fetched):
            if key in self._failing:
                log.info("action %s recovered", describe(key))
                del self._failing[key]
            return ActionRecord(key, outcome.pipeline, outcome.action, outcome.values, True, now)
        self._errors[outcome.reason] += 1
        if self._failing.get(key) != outcome.reason:
            log.warning(
                "fetching action %s failed (%s): %s", describe(key), outcome.reason, outcome.detail
            )
            self._failing[key] = outcome.reason
        if outcome.reason == Reason.NOT_FOUND or previous is None:
            # Gone: no values, no names; the configured target still shows poll_success 0.
            return ActionRecord(key, "", "", None, False, None)
        values = previous.values
        if previous.last_success is None or now - previous.last_success > self._stale_after:
            values = None
        return ActionRecord(
            key, previous.pipeline, previous.action, values, False, previous.last_success
        )
