"""The request budget: unit tests on a fake clock, then measured against the simulator."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from conftest import TOKEN, RunningExporter, config_for, targets_of, value

from exporter.ratelimit import (
    FALLBACK_STOP_SECONDS,
    Clock,
    RateHeaders,
    RateLimited,
    RequestBudget,
)
from exporter.simulator import Fault, Request, Simulator

Start = Callable[..., RunningExporter]
WALL_START = 1_700_000_000.0


class FakeClock:
    """Time that moves only when someone sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.wakeups: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return WALL_START + self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.wakeups.append(self.now + seconds)
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)

    @property
    def clock(self) -> Clock:
        return Clock(self.monotonic, self.wall, self.sleep)


def send_times(
    budget: RequestBudget, fake: FakeClock, n: int, max_wait: float = math.inf
) -> list[float]:
    async def run() -> list[float]:
        times = []
        for _ in range(n):
            await budget.acquire(max_wait)
            times.append(fake.now)
        return times

    return asyncio.run(run())


def no_jitter() -> float:
    return 0.0


def test_burst_goes_at_once_then_the_rate_holds() -> None:
    fake = FakeClock()
    budget = RequestBudget(2.0, 5, clock=fake.clock)
    times = send_times(budget, fake, 10)
    assert times == pytest.approx([0, 0, 0, 0, 0, 0.5, 1.0, 1.5, 2.0, 2.5])


def test_fractional_rate_spaces_requests_two_seconds_apart() -> None:
    fake = FakeClock()
    budget = RequestBudget(0.5, 1, clock=fake.clock)
    assert send_times(budget, fake, 4) == pytest.approx([0, 2, 4, 6])


def test_an_idle_budget_refills_only_up_to_the_burst() -> None:
    fake = FakeClock()
    budget = RequestBudget(1.0, 3, clock=fake.clock)
    send_times(budget, fake, 3)
    fake.now += 100  # idle for a long time
    start = fake.now
    times = [t - start for t in send_times(budget, fake, 5)]
    assert times == pytest.approx([0, 0, 0, 1, 2])


def test_concurrent_callers_share_one_budget() -> None:
    fake = FakeClock()
    budget = RequestBudget(4.0, 2, clock=fake.clock)

    async def run() -> None:
        await asyncio.gather(*(budget.acquire() for _ in range(6)))

    asyncio.run(run())
    # Two go at once (the burst); the other four wake at their own slots, 0.25 s apart.
    assert sorted(fake.wakeups) == pytest.approx([0.25, 0.5, 0.75, 1.0])


def test_no_request_before_the_reset_when_remaining_is_0() -> None:
    fake = FakeClock()
    budget = RequestBudget(10.0, 5, clock=fake.clock, rng=no_jitter)
    budget.record(200, RateHeaders(remaining=0, limit=1000, reset_at=WALL_START + 5))
    assert send_times(budget, fake, 1) == pytest.approx([5.0])


def test_low_remaining_is_spread_until_the_reset_without_bursts() -> None:
    fake = FakeClock()
    budget = RequestBudget(10.0, 5, clock=fake.clock)
    # 50 left of 10 000 with 100 s to go: one request every 2 s.
    budget.record(200, RateHeaders(remaining=50, limit=10_000, reset_at=WALL_START + 100))
    assert send_times(budget, fake, 4) == pytest.approx([0, 2, 4, 6])


def test_plenty_remaining_does_not_slow_down() -> None:
    fake = FakeClock()
    budget = RequestBudget(10.0, 5, clock=fake.clock)
    budget.record(200, RateHeaders(remaining=50, limit=10_000, reset_at=WALL_START + 100))
    budget.record(200, RateHeaders(remaining=9_000, limit=10_000, reset_at=WALL_START + 100))
    times = send_times(budget, fake, 5)
    assert times[-1] < 0.5


def test_ten_percent_of_the_limit_counts_as_low() -> None:
    fake = FakeClock()
    budget = RequestBudget(10.0, 5, clock=fake.clock)
    budget.record(200, RateHeaders(remaining=400, limit=5_000, reset_at=WALL_START + 400))
    assert send_times(budget, fake, 3) == pytest.approx([0, 1, 2])


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"Retry-After": "7"}, 7.0),
        (
            {
                "Retry-After": format_datetime(
                    datetime.fromtimestamp(WALL_START + 12, UTC), usegmt=True
                )
            },
            12.0,
        ),
        ({"X-Rate-Limit-Reset": str(int(WALL_START + 9))}, 9.0),
        ({"Retry-After": "3", "X-Rate-Limit-Reset": str(int(WALL_START + 9))}, 3.0),
        ({}, FALLBACK_STOP_SECONDS),
        ({"Retry-After": "soon", "X-Rate-Limit-Reset": "later"}, FALLBACK_STOP_SECONDS),
    ],
    ids=[
        "retry-after-seconds",
        "retry-after-date",
        "reset",
        "retry-after-wins",
        "no-hint",
        "garbage",
    ],
)
def test_429_stops_every_request_until_the_hint(headers: dict[str, str], seconds: float) -> None:
    fake = FakeClock()
    budget = RequestBudget(10.0, 5, clock=fake.clock, rng=no_jitter)
    budget.record(429, RateHeaders.parse(headers, fake.wall()))
    assert budget.stopped_for == pytest.approx(seconds)
    assert send_times(budget, fake, 1) == pytest.approx([seconds])


def test_429_stop_has_jitter_on_top_never_below() -> None:
    fake = FakeClock()
    budget = RequestBudget(10.0, 5, clock=fake.clock, rng=lambda: 1.0)
    budget.record(429, RateHeaders(retry_after=20.0))
    assert budget.stopped_for == pytest.approx(22.0)  # 10 % of the wait, at most 5 s


def test_repeated_429_without_hints_doubles_the_stop() -> None:
    fake = FakeClock()
    budget = RequestBudget(10.0, 5, clock=fake.clock, rng=no_jitter)
    stops = []
    for _ in range(3):
        budget.record(429, RateHeaders())
        stops.append(budget.stopped_for)
        send_times(budget, fake, 1)
    assert stops == pytest.approx(
        [FALLBACK_STOP_SECONDS, 2 * FALLBACK_STOP_SECONDS, 4 * FALLBACK_STOP_SECONDS]
    )
    budget.record(200, RateHeaders())
    budget.record(429, RateHeaders())
    assert budget.stopped_for == pytest.approx(FALLBACK_STOP_SECONDS)


def test_a_stop_longer_than_max_wait_raises_at_once() -> None:
    fake = FakeClock()
    budget = RequestBudget(10.0, 5, clock=fake.clock, rng=no_jitter)
    budget.record(429, RateHeaders(retry_after=600.0))
    with pytest.raises(RateLimited, match=r"HTTP 429 with Retry-After: no requests .* \(600s\)"):
        send_times(budget, fake, 1, max_wait=60)
    assert fake.sleeps == []


def test_a_reset_in_the_past_or_nonsense_headers_do_not_stop() -> None:
    fake = FakeClock()
    budget = RequestBudget(10.0, 5, clock=fake.clock)
    budget.record(200, RateHeaders(remaining=0, reset_at=WALL_START - 30))
    budget.record(
        200,
        RateHeaders.parse(
            {"X-Rate-Limit-Remaining": "nan", "X-Rate-Limit-Reset": "x"}, fake.wall()
        ),
    )
    assert budget.stopped_for == 0
    assert send_times(budget, fake, 1) == [0.0]


# -- measured against the simulator over loopback ----------------------------------------

NETWORK_SLACK_SECONDS = 0.05  # loopback and thread scheduling between send and the log entry


def assert_within_budget(requests: Sequence[Request], rate: float, burst: int) -> None:
    """No window of the request log holds more than ``burst + rate * width`` requests."""
    times = sorted(r.time for r in requests)
    for i in range(len(times)):
        for j in range(i + 1, len(times)):
            allowed = burst + rate * (times[j] - times[i] + NETWORK_SLACK_SECONDS)
            assert j - i + 1 <= allowed + 1e-9, (
                f"{j - i + 1} requests in {times[j] - times[i]:.3f}s; budget allows {allowed:.2f}"
            )


def generated_sim(actions: int) -> Simulator:
    sim = Simulator(token=TOKEN)
    sim.seed_generated("acme", projects=1, pipelines=1, actions=actions)
    return sim.start()


@pytest.mark.parametrize(
    ("rate", "actions"),
    [
        pytest.param(2.0, 15, id="2rps-15-actions"),
        pytest.param(2.0, 100, id="2rps-100-actions", marks=pytest.mark.soak),
    ],
)
def test_budget_holds_in_the_request_log(run_exporter: Start, rate: float, actions: int) -> None:
    burst = 5
    with generated_sim(actions) as sim:
        assert len(targets_of(sim)) == actions
        started = time.monotonic()
        exporter = run_exporter(
            config_for(sim, buddy={"max_requests_per_second": rate, "burst": burst}),
            ready_timeout=actions / rate + 10,
        )
        elapsed = time.monotonic() - started
        assert len(sim.requests) == actions
        assert_within_budget(sim.requests, rate, burst)
        # The budget is used, not wasted: the cycle takes about (actions - burst) / rate.
        expected = (actions - burst) / rate
        spread = sim.requests[-1].time - sim.requests[0].time
        assert expected - NETWORK_SLACK_SECONDS <= spread <= expected * 1.2 + 0.5
        out = exporter.metrics()
        assert value(out, "buddy_up", workspace="acme") == 1
        print(f"\n{actions} requests at {rate:g}/s (burst {burst}): spread {spread:.2f}s, "
              f"expected {expected:.2f}s, startup {elapsed:.2f}s")  # fmt: skip


def test_remaining_0_means_no_request_before_the_reset(sim: Simulator, run_exporter: Start) -> None:
    # Every answer of the first cycle says: quota used up, it resets 5 s from now.
    reset = math.ceil(time.time()) + 5
    sim.add_fault(
        Fault(
            passthrough=True,
            headers={"X-Rate-Limit-Remaining": "0", "X-Rate-Limit-Reset": str(reset)},
        )
    )
    exporter = run_exporter(config_for(sim))
    first_cycle = len(sim.requests)
    assert value(exporter.metrics(), "buddy_exporter_api_rate_limit_remaining") == 0
    sim.clear_faults()
    exporter.poll()
    later = sim.requests[first_cycle:]
    assert len(later) == 3
    assert min(r.time for r in later) >= reset, [r.time - reset for r in later]
    out = exporter.metrics()
    assert value(out, "buddy_up", workspace="acme") == 1
    assert value(out, "buddy_exporter_api_rate_limit_remaining") > 0


def test_a_stop_beyond_the_interval_fails_fast_as_rate_limited(
    sim: Simulator, run_exporter: Start
) -> None:
    reset = math.ceil(time.time()) + 120
    sim.add_fault(Fault(path=r"/actions/101$", status=429, times=1,
                        headers={"X-Rate-Limit-Remaining": "0", "X-Rate-Limit-Reset": str(reset)}))  # fmt: skip
    data = config_for(
        sim, buddy={"max_concurrency": 1}, poll={"interval_seconds": 5, "stale_after_seconds": 60}
    )
    exporter = run_exporter(data)
    assert len(sim.requests) == 1  # the 429; nothing after it
    exporter.poll()
    assert len(sim.requests) == 1
    out = exporter.metrics()
    assert value(out, "buddy_up", workspace="acme") == 0
    for action_id in ("101", "102", "201"):
        assert value(out, "buddy_action_poll_success", action_id=action_id) == 0
    assert value(out, "buddy_exporter_errors_total", reason="rate_limited") == 6
    assert value(out, "buddy_exporter_api_requests_total", code="429",
                 endpoint="/workspaces/{workspace}/projects/{project}/pipelines/{pipeline_id}/actions/{action_id}") == 1  # fmt: skip
