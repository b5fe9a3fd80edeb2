"""The exporter's lifecycle: one object owns the scheduler, the Buddy clients and the server."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from exporter import logs
from exporter.client import BuddyClient
from exporter.config import ConfigError, Connection, Settings
from exporter.poller import Poller
from exporter.render import MetricsStore, RenderOptions
from exporter.server import Health, MetricsServer
from exporter.snapshot import Snapshot

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 1.0
LIVENESS_TIMEOUT_SECONDS = 30.0

Reloader = Callable[[], tuple[Settings, dict[str, Connection]]]


def _client_key(settings: Settings, connection: Connection) -> tuple[object, ...]:
    # Everything a client is built from: an unchanged key lets a reload keep the client,
    # with its counts, its rate-limit state and its connections.
    buddy = settings.buddy.model_dump(exclude={"token", "token_file", "api_url"})
    return (
        connection.api_url,
        connection.token.get_secret_value(),
        tuple(sorted((k, str(v)) for k, v in buddy.items())),
        settings.poll.interval_seconds,
    )


def make_clients(
    settings: Settings,
    connections: Mapping[str, Connection],
    reusable: Mapping[tuple[object, ...], BuddyClient] | None = None,
) -> dict[str, BuddyClient]:
    """One client per installation and token, shared by the workspaces that use it.

    A stop Buddy asks for (429, quota used up) is waited out if it ends within one
    interval; a longer one fails fast as rate_limited, so a cycle does not hang.
    """
    if settings.buddy.insecure_skip_verify:
        log.warning(
            "buddy.insecure_skip_verify is set: the TLS certificates of %s are NOT verified; "
            "anyone on the network path can impersonate Buddy and read the token",
            ", ".join(sorted({c.api_url for c in connections.values()})),
        )
    by_connection: dict[tuple[object, ...], BuddyClient] = {}
    clients: dict[str, BuddyClient] = {}
    for workspace, connection in connections.items():
        key = _client_key(settings, connection)
        if key not in by_connection and reusable and key in reusable:
            by_connection[key] = reusable[key]
        if key not in by_connection:
            by_connection[key] = BuddyClient.for_config(
                settings.buddy,
                connection.token,
                api_url=connection.api_url,
                max_wait_seconds=settings.poll.interval_seconds,
            )
        clients[workspace] = by_connection[key]
    return clients


def make_poller(
    settings: Settings,
    clients: Mapping[str, BuddyClient],
    publish: Callable[[Snapshot], Awaitable[None]],
    previous: Snapshot | None = None,
    *,
    errors: Counter[str] | None = None,
    retired_requests: Counter[tuple[str, str]] | None = None,
) -> Poller:
    poller = Poller(
        settings.targets,
        clients,
        publish,
        errors=errors,
        retired_requests=retired_requests,
        interval_seconds=settings.poll.interval_seconds,
        stale_after_seconds=settings.poll.stale_after_seconds,
        discovery_interval_seconds=settings.poll.discovery_interval_seconds,
        fetch_mode=settings.buddy.fetch_mode,
        max_concurrency=settings.buddy.max_concurrency,
        per_page=settings.buddy.per_page,
        shard=settings.sharding.shard,
        total_shards=settings.sharding.total_shards,
    )
    if previous is not None and previous.completed:
        # Keep the last good values across a reload, so nothing flaps.
        poller.snapshot = previous
    return poller


def _warn_unused_workspaces(settings: Settings) -> None:
    used = {t.workspace.lower() for t in settings.targets}
    for entry in settings.workspaces:
        if entry.workspace.lower() not in used:
            log.warning(
                "workspaces: %s is configured but no target names it (a typo?)", entry.workspace
            )


def _unique(clients: Mapping[str, BuddyClient]) -> list[BuddyClient]:
    return list({id(c): c for c in clients.values()}.values())


def _file_state(paths: Sequence[Path]) -> tuple[tuple[str, int, int], ...]:
    state = []
    for path in paths:
        try:
            st = os.stat(path)
            state.append((str(path), st.st_mtime_ns, st.st_size))
        except OSError:
            state.append((str(path), -1, -1))
    return tuple(state)


class Exporter:
    """Polls Buddy on a schedule and serves the result; ``start()`` then ``stop()``.

    ``reloader`` re-reads the configuration (on SIGHUP via :meth:`request_reload`, or
    when a file in ``watch`` changes); a valid one takes effect at the next cycle.
    """

    def __init__(
        self,
        settings: Settings,
        connections: Mapping[str, Connection],
        *,
        reloader: Reloader | None = None,
        watch: Sequence[Path] = (),
    ) -> None:
        self.settings = settings
        self._connections = dict(connections)
        for connection in connections.values():
            logs.redact(connection.token.get_secret_value())
        _warn_unused_workspaces(settings)
        self.clients = make_clients(settings, connections)
        # Counters outlive reloads: they only ever go up while the process runs.
        self._errors: Counter[str] = Counter()
        self._retired_requests: Counter[tuple[str, str]] = Counter()
        self.poller = make_poller(
            settings,
            self.clients,
            self._publish,
            errors=self._errors,
            retired_requests=self._retired_requests,
        )
        self.store = MetricsStore(self.poller.snapshot, self._render_options(settings))
        self.server = MetricsServer(
            settings.web.listen_address,
            self.store,
            Health(self._live, self._ready),
            lambda: self._summary(self.settings),
        )
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        self._beat = time.monotonic()
        self._heartbeat: asyncio.Task[None] | None = None
        self._cycle: asyncio.Task[object] | None = None
        self._stopping = False
        self._reloader = reloader
        self._watch = tuple(watch)
        self._watch_state = _file_state(self._watch)
        self._reload_requested = False
        self._reload_ok = True
        self._reload_success_time = time.time()

    @staticmethod
    def _render_options(settings: Settings) -> RenderOptions:
        return RenderOptions(settings.poll.interval_seconds, settings.metrics.status_series)

    @staticmethod
    def _summary(settings: Settings) -> str:
        shards = settings.sharding
        return (
            f"{len(settings.targets)} configured target(s), "
            f"polled every {settings.poll.interval_seconds:g}s"
            + (
                f", shard {shards.shard} of {shards.total_shards}."
                if shards.total_shards > 1
                else "."
            )
        )

    async def _publish(self, snapshot: Snapshot) -> None:
        snapshot = dataclasses.replace(
            snapshot,
            config_reload_successful=self._reload_ok,
            config_reload_success_timestamp=self._reload_success_time,
        )
        # Rendering is CPU work: keep it off the event loop.
        await asyncio.to_thread(self.store.publish, snapshot)

    def _live(self) -> bool:
        return bool(self.scheduler.running) and (
            time.monotonic() - self._beat < LIVENESS_TIMEOUT_SECONDS
        )

    def _ready(self) -> tuple[bool, str]:
        snapshot = self.store.current.snapshot
        if not snapshot.completed:
            return False, "not ready: the first poll cycle has not finished"
        if snapshot.problems:
            lines = "\n".join(f"problem: {p}" for p in snapshot.problems)
            return True, f"ready; the last poll cycle had failures:\n{lines}"
        return True, "ready"

    async def _beat_forever(self) -> None:
        while True:
            self._beat = time.monotonic()
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def _poll(self) -> None:
        self._cycle = asyncio.current_task()
        try:
            if self._watch and _file_state(self._watch) != self._watch_state:
                log.info("a watched file changed (config or token file): reloading")
                self._reload_requested = True
            if self._reload_requested:
                self._reload_requested = False
                await self.reload()
            await self.poller.poll_once()
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            log.info("poll cycle abandoned at shutdown")
        finally:
            self._cycle = None

    def request_reload(self) -> None:
        """Ask for a reload before the next cycle (the SIGHUP handler)."""
        log.info("reload requested")
        self._reload_requested = True
        with contextlib.suppress(Exception):  # the job may be running; the flag is enough then
            self.scheduler.modify_job("poll", next_run_time=datetime.now(UTC))

    async def reload(self) -> bool:
        """Re-read the configuration now; a bad one is logged and the old one stays."""
        if self._reloader is None:
            return False
        self._watch_state = _file_state(self._watch)
        try:
            settings, connections = await asyncio.to_thread(self._reloader)
        except ConfigError as exc:
            lines = exc.lines
        except Exception as exc:  # whatever goes wrong, the running config stays
            log.debug("reload failed", exc_info=True)
            lines = [f"config: {type(exc).__name__}: {exc}"]
        else:
            lines = []
        if lines:
            for line in lines:
                log.error("reload rejected, keeping the running configuration: %s", line)
            self._reload_ok = False
            await self._publish(self.poller.snapshot)
            return False
        _warn_unused_workspaces(settings)
        for connection in connections.values():
            logs.redact(connection.token.get_secret_value())
        old = {_client_key(self.settings, self._connections[w]): c for w, c in self.clients.items()}
        self.clients = make_clients(settings, connections, old)
        self._connections = dict(connections)
        kept = {id(c) for c in self.clients.values()}
        retired = [c for c in {id(c): c for c in old.values()}.values() if id(c) not in kept]
        for client in retired:  # their counts stay in the counters, which only go up
            for endpoint, code, count in client.stats().requests:
                self._retired_requests[(endpoint, code)] += count
        self.poller = make_poller(
            settings,
            self.clients,
            self._publish,
            self.poller.snapshot,
            errors=self._errors,
            retired_requests=self._retired_requests,
        )
        self.store.options = self._render_options(settings)
        if settings.web != self.settings.web:
            log.warning("web.listen_address changed: it takes effect at the next restart")
        if settings.log != self.settings.log:
            logs.set_level(settings.log.level.value)
        if settings.poll.interval_seconds != self.settings.poll.interval_seconds:
            self.scheduler.reschedule_job(
                "poll", trigger="interval", seconds=settings.poll.interval_seconds
            )
        self.settings = settings
        self._reload_ok = True
        self._reload_success_time = time.time()
        for client in retired:
            await client.aclose()
        log.info("configuration reloaded: %s", self._summary(settings))
        return True

    async def start(self) -> None:
        """Bind the server, then run the first poll at once and every interval after."""
        self.server.start()
        self._heartbeat = asyncio.create_task(self._beat_forever())
        self.scheduler.add_job(
            self._poll,
            "interval",
            seconds=self.settings.poll.interval_seconds,
            next_run_time=datetime.now(UTC),
            id="poll",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
        )
        self.scheduler.start()
        log.info(
            "listening on %s, %s; the first cycle starts now, at most %g requests/s "
            "(buddy.max_requests_per_second)",
            self.settings.web.listen_address,
            self._summary(self.settings),
            self.settings.buddy.max_requests_per_second,
        )

    async def stop(self) -> None:
        """Stop polling and serving; in-flight requests are abandoned."""
        self._stopping = True
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        cycle = self._cycle
        if cycle is not None and not cycle.done():
            cycle.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(asyncio.shield(cycle), timeout=5)
        if self._heartbeat:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        self.server.stop()
        for client in _unique(self.clients):
            await client.aclose()

    async def run(self, stop: asyncio.Event) -> None:
        """Start, wait for ``stop``, then stop."""
        await self.start()
        try:
            await stop.wait()
        finally:
            log.info("shutting down")
            await self.stop()
