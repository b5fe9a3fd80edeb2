"""The exporter's lifecycle: one object owns the scheduler, the Buddy client and the server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from pydantic import SecretStr

from exporter.client import BuddyClient
from exporter.config import Settings
from exporter.poller import Poller
from exporter.render import MetricsStore, RenderOptions
from exporter.server import Health, MetricsServer
from exporter.snapshot import Snapshot

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 1.0
LIVENESS_TIMEOUT_SECONDS = 30.0


class Exporter:
    """Polls Buddy on a schedule and serves the result; ``start()`` then ``stop()``."""

    def __init__(self, settings: Settings, token: SecretStr) -> None:
        self.settings = settings
        self.client = BuddyClient(
            settings.buddy.api_url,
            token,
            timeout=settings.buddy.request_timeout_seconds,
            max_connections=settings.buddy.max_concurrency,
        )
        self.poller = Poller(
            settings.targets,
            self.client,
            self._publish,
            interval_seconds=settings.poll.interval_seconds,
            stale_after_seconds=settings.poll.stale_after_seconds,
            max_concurrency=settings.buddy.max_concurrency,
        )
        self.store = MetricsStore(
            self.poller.snapshot,
            RenderOptions(settings.poll.interval_seconds, settings.metrics.status_series),
        )
        summary = (
            f"{len(settings.targets)} configured target(s) at {settings.buddy.api_url}, "
            f"polled every {settings.poll.interval_seconds:g}s."
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
        await self.client.aclose()

    async def run(self, stop: asyncio.Event) -> None:
        """Start, wait for ``stop``, then stop."""
        await self.start()
        try:
            await stop.wait()
        finally:
            log.info("shutting down")
            await self.stop()
