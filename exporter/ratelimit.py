"""The client-side request budget of one Buddy token.

Three rules decide when the next request may go out, all shared by every
request made with the token:

* our own budget, a token bucket of ``buddy.max_requests_per_second`` with a
  burst of ``buddy.burst`` (implemented as GCRA: one "theoretical arrival time");
* Buddy's quota, from ``X-Rate-Limit-Remaining`` / ``X-Rate-Limit-Reset``: when
  few requests remain, what remains is spread evenly until the reset, and with
  none left nothing is sent before the reset;
* a stop after ``429``: nothing is sent until ``Retry-After`` (seconds or an
  HTTP date) or else ``X-Rate-Limit-Reset`` has passed, plus jitter. The body of
  a 429 is never looked at.

Time comes from an injectable :class:`Clock`, so tests run without sleeping.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

#: Pace when fewer than this many requests remain (Buddy's Go SDK uses 100) ...
LOW_REMAINING = 100
#: ... or fewer than this fraction of the limit.
LOW_FRACTION = 0.1
#: A 429 without Retry-After or X-Rate-Limit-Reset stops calls this long (doubling if repeated).
FALLBACK_STOP_SECONDS = 30.0
#: No stop lasts longer than this, whatever the headers say (clock skew, nonsense values).
MAX_STOP_SECONDS = 3600.0


@dataclass(frozen=True, slots=True)
class Clock:
    """Where the budget reads the time and how it waits; tests pass a fake one."""

    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


SYSTEM_CLOCK = Clock()


@dataclass(frozen=True, slots=True)
class RateHeaders:
    """The rate-limit headers of one response; ``None`` when absent or unreadable."""

    remaining: float | None = None
    limit: float | None = None
    reset_at: float | None = None  # Unix seconds
    retry_after: float | None = None  # seconds from when the response was read

    @classmethod
    def parse(cls, headers: Mapping[str, str], now_wall: float) -> RateHeaders:
        """Read ``X-Rate-Limit-*`` and ``Retry-After`` from ``headers``."""
        return cls(
            remaining=_number(headers.get("X-Rate-Limit-Remaining")),
            limit=_number(headers.get("X-Rate-Limit-Limit")),
            reset_at=_number(headers.get("X-Rate-Limit-Reset")),
            retry_after=_retry_after(headers.get("Retry-After"), now_wall),
        )


def _number(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _retry_after(raw: str | None, now_wall: float) -> float | None:
    """``Retry-After`` as seconds: either delta-seconds or an HTTP date."""
    if raw is None:
        return None
    seconds = _number(raw)
    if seconds is not None:
        return max(seconds, 0.0)
    try:
        when = parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(when.timestamp() - now_wall, 0.0)


class RateLimited(Exception):
    """Buddy asked for a stop that lasts longer than the caller is willing to wait."""

    def __init__(self, seconds: float, until_wall: float, cause: str) -> None:
        until = datetime.fromtimestamp(until_wall, UTC).strftime("%H:%M:%SZ")
        super().__init__(f"{cause}: no requests with this token until {until} ({seconds:.0f}s)")
        self.seconds = seconds
        self.until_wall = until_wall


class RequestBudget:
    """Decides when the next request of one token may be sent."""

    def __init__(
        self,
        max_requests_per_second: float,
        burst: int,
        *,
        clock: Clock = SYSTEM_CLOCK,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if max_requests_per_second <= 0 or burst < 1:
            raise ValueError("max_requests_per_second must be > 0 and burst >= 1")
        self._interval = 1.0 / max_requests_per_second
        self._tolerance = (burst - 1) * self._interval
        self._clock = clock
        self._rng = rng
        self._tat = -math.inf  # GCRA's theoretical arrival time of the next request
        self._stop_until = -math.inf  # monotonic; nothing is sent before it
        self._stop_cause = ""
        self._pace_interval = 0.0  # spacing that spreads Buddy's remaining quota
        self._pace_until = -math.inf
        self._consecutive_429 = 0

    @property
    def stopped_for(self) -> float:
        """Seconds until requests may go out again after a 429 or an exhausted quota."""
        return max(self._stop_until - self._clock.monotonic(), 0.0)

    async def acquire(self, max_wait: float = math.inf) -> None:
        """Wait until a request may be sent.

        Raises :class:`RateLimited` without waiting when Buddy's stop lasts
        longer than ``max_wait``; our own pacing is always waited for.
        """
        while True:
            now = self._clock.monotonic()
            stopped = self._stop_until - now
            if stopped > 0:
                if stopped > max_wait:
                    raise RateLimited(stopped, self._clock.wall() + stopped, self._stop_cause)
                await self._clock.sleep(stopped)
                continue
            wait = self._reserve(now)
            if wait > 0:
                await self._clock.sleep(wait)
                if self._stop_until > self._clock.monotonic():
                    continue  # a 429 came back while we waited: the stop wins
            return

    def _reserve(self, now: float) -> float:
        pacing = now < self._pace_until
        interval = max(self._interval, self._pace_interval) if pacing else self._interval
        tolerance = 0.0 if pacing else self._tolerance  # no bursts while the quota runs low
        tat = max(self._tat, now)
        self._tat = tat + interval
        return max(tat - tolerance - now, 0.0)

    def record(self, status: int, headers: RateHeaders) -> None:
        """Learn from one response: its status and rate-limit headers."""
        now = self._clock.monotonic()
        wall = self._clock.wall()
        reset_in = None
        if headers.reset_at is not None:
            reset_in = min(max(headers.reset_at - wall, 0.0), MAX_STOP_SECONDS)
        if status == 429:
            self._consecutive_429 += 1
            if headers.retry_after is not None:
                seconds, cause = headers.retry_after, "HTTP 429 with Retry-After"
            elif reset_in is not None:
                seconds, cause = reset_in, "HTTP 429 until X-Rate-Limit-Reset"
            else:
                seconds = FALLBACK_STOP_SECONDS * 2 ** min(self._consecutive_429 - 1, 6)
                cause = "HTTP 429 without Retry-After or X-Rate-Limit-Reset"
            self._stop(now, min(seconds, MAX_STOP_SECONDS), cause)
            return
        self._consecutive_429 = 0
        remaining = headers.remaining
        if remaining is None:
            return
        if remaining <= 0:
            if reset_in:  # a reset already past means the quota is back
                self._stop(now, reset_in, "X-Rate-Limit-Remaining is 0")
            return
        low = remaining < LOW_REMAINING or (
            headers.limit is not None and remaining < LOW_FRACTION * headers.limit
        )
        if low and reset_in is not None and reset_in > 0:
            self._pace_interval = reset_in / remaining
            self._pace_until = now + reset_in
        elif not low:
            self._pace_until = -math.inf

    def _stop(self, now: float, seconds: float, cause: str) -> None:
        # Jitter, so that several exporters (or shards) sharing a token do not return in step.
        jitter = self._rng() * min(max(0.1 * seconds, 0.1), 5.0)
        until = now + seconds + jitter
        if until > self._stop_until:
            self._stop_until = until
            self._stop_cause = cause
