"""Unit tests of the Buddy client over ``httpx.MockTransport``, on a fake clock."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from pydantic import SecretStr
from test_ratelimit import FakeClock

from exporter.client import (
    ACTION_ENDPOINT,
    AUTH_COOLDOWN_SECONDS,
    MAX_AUTH_COOLDOWN_SECONDS,
    ApiError,
    BuddyClient,
    Reason,
)

TOKEN = "unit-test-token-7d1e"
PATH = "/workspaces/acme/projects/shop/pipelines/1/actions/101"
OTHER_WORKSPACE = "/workspaces/beta/projects/shop/pipelines/1/actions/101"
Handler = Callable[[httpx.Request], httpx.Response]


def make_client(handler: Handler, fake: FakeClock, **options: object) -> BuddyClient:
    settings: dict[str, object] = {
        "max_requests_per_second": 1000.0,
        "burst": 100,
        "max_retries": 3,
        "retry_backoff_seconds": 0.5,
        **options,
    }
    return BuddyClient(
        "http://buddy.test",
        SecretStr(TOKEN),
        timeout=5.0,
        transport=httpx.MockTransport(handler),
        clock=fake.clock,
        rng=lambda: 0.5,
        **settings,  # type: ignore[arg-type]
    )


def scripted(*responses: httpx.Response) -> tuple[Handler, list[httpx.Request]]:
    """A handler answering with ``responses`` in turn (the last one repeats)."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return responses[min(len(seen) - 1, len(responses) - 1)]

    return handler, seen


def get(client: BuddyClient, path: str = PATH) -> object:
    return asyncio.run(client.get_json(ACTION_ENDPOINT, path))


def get_error(client: BuddyClient, path: str = PATH) -> ApiError:
    with pytest.raises(ApiError) as info:
        get(client, path)
    return info.value


def requests_by_code(client: BuddyClient) -> dict[str, int]:
    return {code: n for _, code, n in client.stats().requests}


def test_transient_5xx_is_retried_with_growing_backoff() -> None:
    fake = FakeClock()
    handler, seen = scripted(
        httpx.Response(503), httpx.Response(502), httpx.Response(200, json={"id": 1})
    )
    client = make_client(handler, fake)
    assert get(client) == {"id": 1}
    assert len(seen) == 3
    # 0.5 s then 1 s, times the jitter factor 0.5 + rng/2 = 0.75.
    assert fake.sleeps == pytest.approx([0.375, 0.75])
    assert requests_by_code(client) == {"503": 1, "502": 1, "200": 1}


def test_persistent_5xx_gives_up_after_max_retries() -> None:
    fake = FakeClock()
    handler, seen = scripted(httpx.Response(500, json={"errors": [{"message": "boom"}]}))
    error = get_error(make_client(handler, fake, max_retries=2))
    assert (error.reason, error.status, error.detail) == (
        Reason.SERVER_ERROR,
        500,
        "HTTP 500: boom",
    )
    assert len(seen) == 3


def test_backoff_is_capped() -> None:
    fake = FakeClock()
    handler, _ = scripted(httpx.Response(500))
    get_error(make_client(handler, fake, max_retries=10, retry_backoff_seconds=10))
    assert max(fake.sleeps) == pytest.approx(30 * 0.75)


def test_connection_errors_are_retried() -> None:
    fake = FakeClock()
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json={"id": 1})

    client = make_client(handler, fake)
    assert get(client) == {"id": 1}
    assert requests_by_code(client) == {"error": 2, "200": 1}


@pytest.mark.parametrize(
    ("status", "reason"), [(401, Reason.UNAUTHORIZED), (403, Reason.FORBIDDEN)]
)
def test_refused_token_is_not_retried_and_the_workspace_cools_down(
    status: int, reason: str
) -> None:
    fake = FakeClock()
    handler, seen = scripted(httpx.Response(status, json={"errors": [{"message": "no access"}]}))
    client = make_client(handler, fake)
    first = get_error(client)
    assert (first.reason, len(seen)) == (reason, 1)
    # While cooling down: the same reason, no request.
    fake.now += AUTH_COOLDOWN_SECONDS - 1
    again = get_error(client)
    assert again.reason == reason and again.status == status
    assert "no request made" in again.detail and "no access" in again.detail
    assert len(seen) == 1
    # Other workspaces are not affected.
    get_error(client, OTHER_WORKSPACE)
    assert len(seen) == 2


def test_cooldown_doubles_per_refusal_up_to_the_cap_and_resets_on_success() -> None:
    fake = FakeClock()
    answers = [httpx.Response(401)]

    def handler(request: httpx.Request) -> httpx.Response:
        return answers[0]

    client = make_client(handler, fake)
    cooldowns = []
    for _ in range(6):
        get_error(client)
        started = fake.now
        while True:  # find when the next request is let through
            fake.now += 1
            error = get_error(client)
            if "no request made" not in error.detail:
                break
        cooldowns.append(fake.now - started)
    assert cooldowns == [60, 120, 240, 480, 900, 900]
    assert MAX_AUTH_COOLDOWN_SECONDS == 900
    fake.now += 900
    answers[0] = httpx.Response(200, json={"id": 1})
    assert get(client) == {"id": 1}
    answers[0] = httpx.Response(401)
    get_error(client)
    fake.now += AUTH_COOLDOWN_SECONDS
    # The first cooldown again, not a tenth: the success reset the count.
    assert "no request made" not in get_error(client).detail


def test_404_is_not_retried() -> None:
    fake = FakeClock()
    handler, seen = scripted(
        httpx.Response(404, json={"errors": [{"message": "Action not found"}]})
    )
    error = get_error(make_client(handler, fake))
    assert (error.reason, len(seen), fake.sleeps) == (Reason.NOT_FOUND, 1, [])


def test_429_waits_for_retry_after_then_retries() -> None:
    fake = FakeClock()
    handler, seen = scripted(
        httpx.Response(429, headers={"Retry-After": "4"}, text="<html>slow down</html>"),
        httpx.Response(200, json={"id": 1}),
    )
    client = make_client(handler, fake)
    assert get(client) == {"id": 1}
    assert len(seen) == 2
    assert fake.now >= 4
    assert requests_by_code(client) == {"429": 1, "200": 1}


def test_429_beyond_max_wait_fails_fast_and_stops_other_calls() -> None:
    fake = FakeClock()
    handler, seen = scripted(httpx.Response(429, headers={"Retry-After": "300"}))
    client = make_client(handler, fake, max_wait_seconds=60)
    error = get_error(client)
    assert error.reason == Reason.RATE_LIMITED and "no request made" in error.detail
    assert get_error(client, OTHER_WORKSPACE).reason == Reason.RATE_LIMITED
    assert len(seen) == 1


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (
            httpx.Response(
                200, text="<html><body>Sign in</body></html>", headers={"Content-Type": "text/html"}
            ),
            Reason.INVALID_JSON,
        ),
        (httpx.Response(200, text='{"id": 1, "name": "cut'), Reason.INVALID_JSON),
        (httpx.Response(200, content=b"\xff\xfe\xfa"), Reason.INVALID_JSON),
    ],
    ids=["html-200", "truncated-json", "binary"],
)
def test_bad_bodies_are_not_retried(response: httpx.Response, reason: str) -> None:
    fake = FakeClock()
    handler, seen = scripted(response)
    error = get_error(make_client(handler, fake))
    assert (error.reason, len(seen)) == (reason, 1)


def test_json_with_a_wrong_content_type_is_fine() -> None:
    fake = FakeClock()
    handler, _ = scripted(
        httpx.Response(200, text='{"id": 7}', headers={"Content-Type": "text/plain"})
    )
    assert get(make_client(handler, fake)) == {"id": 7}


def test_body_over_the_cap_is_invalid_response() -> None:
    fake = FakeClock()

    async def endless_json() -> AsyncIterator[bytes]:
        yield b'{"id": 1, "pad": "'
        while True:
            yield b"x" * 4096

    handler, seen = scripted(httpx.Response(200, content=endless_json()))
    client = make_client(handler, fake, max_response_bytes=64 * 1024)
    error = get_error(client)
    assert error.reason == Reason.INVALID_RESPONSE and "larger than 65536 bytes" in error.detail
    assert len(seen) == 1
    assert requests_by_code(client) == {"200": 1}


def test_declared_length_over_the_cap_is_refused_unread() -> None:
    fake = FakeClock()
    read = []

    async def body() -> AsyncIterator[bytes]:
        read.append(True)
        yield b"{}"

    handler, _ = scripted(
        httpx.Response(200, headers={"Content-Length": str(10**9)}, content=body())
    )
    error = get_error(make_client(handler, fake, max_response_bytes=1024))
    assert error.reason == Reason.INVALID_RESPONSE
    assert read == []


def test_cap_applies_to_the_decompressed_body() -> None:
    fake = FakeClock()
    bomb = gzip.compress(b'{"pad": "' + b"0" * 5_000_000 + b'"}')
    assert len(bomb) < 64 * 1024
    handler, _ = scripted(httpx.Response(200, content=bomb, headers={"Content-Encoding": "gzip"}))
    error = get_error(make_client(handler, fake, max_response_bytes=1024 * 1024))
    assert error.reason == Reason.INVALID_RESPONSE


def test_a_body_that_never_ends_hits_the_overall_deadline() -> None:
    fake = FakeClock()

    async def trickle() -> AsyncIterator[bytes]:
        yield b'{"id": 1, "name": "'
        while True:
            await asyncio.sleep(0.01)  # each read is quick: only an overall deadline stops this
            yield b"x"

    handler, _ = scripted(httpx.Response(200, content=trickle()))
    client = BuddyClient("http://buddy.test", SecretStr(TOKEN), timeout=0.3,
                         transport=httpx.MockTransport(handler), max_retries=0, clock=fake.clock)  # fmt: skip
    error = get_error(client)
    assert error.reason == Reason.TIMEOUT and "0.3s" in error.detail
    assert requests_by_code(client) == {"error": 1}


def test_the_token_is_taken_out_of_error_texts() -> None:
    fake = FakeClock()
    handler, _ = scripted(
        httpx.Response(401, json={"errors": [{"message": f"token {TOKEN} is bad"}]})
    )
    error = get_error(make_client(handler, fake))
    assert TOKEN not in error.detail and TOKEN not in str(error)
    assert "token <redacted> is bad" in error.detail
