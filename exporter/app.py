"""The exporter's lifecycle: one object owns the scheduler, the Buddy client and the server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from exporter.client import BuddyClient
from exporter.config import Connection, Settings
from exporter.poller import Poller
from exporter.render import MetricsStore, RenderOptions
from exporter.server import Health, MetricsServer
from exporter.snapshot import Snapshot

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 1.0
LIVENESS_TIMEOUT_SECONDS = 30.0


class Exporter:
    """Polls Buddy on a schedule and serves the result; ``start()`` then ``stop()``."""

    def __init__(self, settings: Settings, connections: Mapping[str, Connection]) -> None:
        self.settings = settings
        # One client per installation and token, shared by the workspaces that use it.
        by_connection: dict[tuple[str, str], BuddyClient] = {}
        self.clients: dict[str, BuddyClient] = {}
        for workspace, connection in connections.items():
            key = (connection.api_url, connection.token.get_secret_value())
            if key not in by_connection:
                by_connection[key] = BuddyClient(
                    connection.api_url,
                    connection.token,
                    timeout=settings.buddy.request_timeout_seconds,
                    max_connections=settings.buddy.max_concurrency,
                )
            self.clients[workspace] = by_connection[key]
        self.poller = Poller(
            settings.targets,
            self.clients,
            self._publish,
            interval_seconds=settings.poll.interval_seconds,
            stale_after_seconds=settings.poll.stale_after_seconds,
            discovery_interval_seconds=settings.poll.discovery_interval_seconds,
            fetch_mode=settings.buddy.fetch_mode,
            max_concurrency=settings.buddy.max_concurrency,
            per_page=settings.buddy.per_page,
            shard=settings.sharding.shard,
            total_shards=settings.sharding.total_shards,
        )
        self.store = MetricsStore(
            self.poller.snapshot,
            RenderOptions(settings.poll.interval_seconds, settings.metrics.status_series),
        )
        summary = (
            f"{len(settings.targets)} configured target(s) in {len(self.clients)} workspace(s), "
            f"polled every {settings.poll.interval_seconds:g}s"
            + (
                f", shard {settings.sharding.shard} of {settings.sharding.total_shards}."
                if settings.sharding.total_shards > 1
                else "."
            )
        )
        self.server = MetricsServer(
            settings.web.listen_address, self.store, Health(self._live, self._ready), summary
        )
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        self._beat = time.monotonic()
        self._heartbeat: asyncio.Task[None] | None = None

    async def _publish(self, snapshot: Snapshot) -> None:
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
        return True, "ready"

    async def _beat_forever(self) -> None:
        while True:
            self._beat = time.monotonic()
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def start(self) -> None:
        """Bind the server, then run the first poll at once and every interval after."""
        self.server.start()
        self._heartbeat = asyncio.create_task(self._beat_forever())
        self.scheduler.add_job(
            self.poller.poll_once,
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
            "listening on %s, polling %d target(s) every %gs",
            self.settings.web.listen_address,
            len(self.settings.targets),
            self.settings.poll.interval_seconds,
        )

    async def stop(self) -> None:
        """Stop polling and serving; in-flight requests are abandoned."""
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        if self._heartbeat:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        self.server.stop()
        for client in {id(c): c for c in self.clients.values()}.values():
            await client.aclose()

    async def run(self, stop: asyncio.Event) -> None:
        """Start, wait for ``stop``, then stop."""
        await self.start()
        try:
            await stop.wait()
        finally:
            log.info("shutting down")
            await self.stop()
