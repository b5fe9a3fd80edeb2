"""The Buddy REST API client: one ``httpx.AsyncClient`` and one request budget per token.

Inside one call it retries what may pass (5xx, timeouts, connection errors, 429
once the stop is over) a bounded number of times with exponential backoff and
jitter; it does not retry what will not (401/403, 404, bad bodies). After a
401/403 it stops calling that workspace for a cooldown that grows with every
further failure. Bodies are read by streaming, up to a size cap and an overall
deadline, so a huge or never-ending response cannot hold the poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from exporter import __version__
from exporter.config import BuddyConfig
from exporter.models import error_message
from exporter.ratelimit import SYSTEM_CLOCK, Clock, RateHeaders, RateLimited, RequestBudget

log = logging.getLogger(__name__)

MEDIA_TYPE = "buddy.v1.1.0"
PROJECTS_ENDPOINT = "/workspaces/{workspace}/projects"
PIPELINES_ENDPOINT = "/workspaces/{workspace}/projects/{project}/pipelines"
PIPELINE_ENDPOINT = "/workspaces/{workspace}/projects/{project}/pipelines/{pipeline_id}"
ACTIONS_ENDPOINT = "/workspaces/{workspace}/projects/{project}/pipelines/{pipeline_id}/actions"
#: Buddy's documented default page size; a server's maximum cannot be below it.
DEFAULT_PAGE_SIZE = 20
MAX_PAGES = 1000
ACTION_ENDPOINT = (
    "/workspaces/{workspace}/projects/{project}/pipelines/{pipeline_id}/actions/{action_id}"
)
#: How much of an error body is read for its message; the rest is dropped.
ERROR_BODY_BYTES = 64 * 1024
#: Backoff between retries never exceeds this.
MAX_BACKOFF_SECONDS = 30.0
#: After a 401/403 a workspace is not called for this long, doubling per further failure ...
AUTH_COOLDOWN_SECONDS = 60.0
#: ... up to this.
MAX_AUTH_COOLDOWN_SECONDS = 900.0


@dataclass(frozen=True, slots=True)
class ApiStats:
    """Cumulative request counts and the last seen rate-limit headers of one client."""

    requests: tuple[tuple[str, str, int], ...] = ()
    rate_limit_remaining: float | None = None
    rate_limit_limit: float | None = None


class Reason:
    """The fixed set of failure reasons used in logs and ``buddy_exporter_errors_total``."""

    TIMEOUT = "timeout"
    CONNECTION = "connection"
    TLS = "tls"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    HTTP_ERROR = "http_error"
    INVALID_JSON = "invalid_json"
    INVALID_RESPONSE = "invalid_response"
    INVALID_FIELD = "invalid_field"
    INTERNAL = "internal"  # an exporter bug met on one object; the others go on

    ALL = (
        TIMEOUT,
        CONNECTION,
        TLS,
        UNAUTHORIZED,
        FORBIDDEN,
        NOT_FOUND,
        RATE_LIMITED,
        SERVER_ERROR,
        HTTP_ERROR,
        INVALID_JSON,
        INVALID_RESPONSE,
        INVALID_FIELD,
        INTERNAL,
    )


class ApiError(Exception):
    """A failed API call; ``reason`` is one of :class:`Reason`. Never carries the token."""

    def __init__(self, reason: str, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.status = status
        self.detail = detail


def printable(text: str, limit: int = 300) -> str:
    """``text`` made safe for one log line: control characters escaped, length capped."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def segment(value: str | int) -> str:
    """A value as one URL path segment: ``/``, ``?``, ``#``, ``..`` and the like escaped."""
    text = quote(str(value), safe="")
    return text if text not in (".", "..") else text.replace(".", "%2E")


def path_for(endpoint: str, **values: str | int) -> str:
    """The path of an endpoint template, each value escaped as a path segment."""
    return endpoint.format(**{k: segment(v) for k, v in values.items()})


def _reason_for_status(status: int) -> str:
    if status == 401:
        return Reason.UNAUTHORIZED
    if status == 403:
        return Reason.FORBIDDEN
    if status == 404:
        return Reason.NOT_FOUND
    if status == 429:
        return Reason.RATE_LIMITED
    if status >= 500:
        return Reason.SERVER_ERROR
    return Reason.HTTP_ERROR


@dataclass(slots=True)
class _Cooldown:
    """A workspace whose token was refused: no calls until ``until`` (monotonic)."""

    failures: int
    until: float
    error: ApiError


class _TooLarge(Exception):
    pass


def _workspace_of(path: str) -> str:
    """The workspace a path belongs to (``""`` for ``/workspaces`` itself)."""
    parts = path.strip("/").split("/")
    return parts[1] if len(parts) > 1 and parts[0] == "workspaces" else ""


def _tls_problem(exc: BaseException) -> str | None:
    """What failed in a TLS handshake, from the ``ssl`` error under httpx's wrappers."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return f"certificate verify failed: {current.verify_message}"
        if isinstance(current, ssl.SSLError):
            return f"TLS handshake failed: {current.reason or current}"
        current = current.__cause__ or current.__context__
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return text
    return None


def tls_verify(buddy: BuddyConfig) -> ssl.SSLContext | bool:
    """What httpx should verify the server with: the private CA, the system store, or nothing."""
    if buddy.insecure_skip_verify:
        return False
    if buddy.ca_file is not None:
        return ssl.create_default_context(cafile=str(buddy.ca_file))
    return True


async def _read_capped(response: httpx.Response, limit: int, *, strict: bool) -> bytes:
    """The (decoded) body, at most ``limit`` bytes; over it, raise (``strict``) or cut."""
    declared = response.headers.get("Content-Length", "")
    if strict and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            if strict:
                raise _TooLarge
            chunks.append(chunk[: len(chunk) - (size - limit)])
            break
        chunks.append(chunk)
    return b"".join(chunks)


class BuddyClient:
    """Makes GET requests with one token to one Buddy API base URL, and counts them."""

    def __init__(
        self,
        api_url: str,
        token: SecretStr,
        timeout: float,
        max_connections: int = 8,
        verify: ssl.SSLContext | bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        max_requests_per_second: float = 10.0,
        burst: int = 5,
        max_retries: int = 3,
        retry_backoff_seconds: float = 0.5,
        max_response_bytes: int = 16 * 1024 * 1024,
        max_wait_seconds: float = math.inf,
        clock: Clock = SYSTEM_CLOCK,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._token = token
        self._http = httpx.AsyncClient(
            base_url=api_url,
            headers={
                "Authorization": f"Bearer {token.get_secret_value()}",
                "X-Buddy-Media-Type": MEDIA_TYPE,
                "Accept": "application/json",
                "User-Agent": f"buddy-exporter/{__version__}",
            },
            timeout=timeout,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            verify=verify,
            transport=transport,
            follow_redirects=False,
            trust_env=True,  # HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY
        )
        self._deadline = timeout
        self._budget = RequestBudget(max_requests_per_second, burst, clock=clock, rng=rng)
        self._max_retries = max_retries
        self._backoff = retry_backoff_seconds
        self._max_bytes = max_response_bytes
        self._max_wait = max_wait_seconds
        self._clock = clock
        self._rng = rng
        self._cooldowns: dict[str, _Cooldown] = {}
        self._requests: Counter[tuple[str, str]] = Counter()
        self._rate_limit_remaining: float | None = None
        self._rate_limit_limit: float | None = None
        self._full_pages_seen: set[str] = set()

    @classmethod
    def for_config(
        cls,
        buddy: BuddyConfig,
        token: SecretStr,
        *,
        api_url: str | None = None,
        max_wait_seconds: float = math.inf,
    ) -> BuddyClient:
        """A client with the settings of ``buddy`` (``api_url`` overrides its URL)."""
        return cls(
            api_url or buddy.api_url,
            token,
            timeout=buddy.request_timeout_seconds,
            max_connections=buddy.max_concurrency,
            verify=tls_verify(buddy),
            max_requests_per_second=buddy.max_requests_per_second,
            burst=buddy.burst,
            max_retries=buddy.max_retries,
            retry_backoff_seconds=buddy.retry_backoff_seconds,
            max_response_bytes=buddy.max_response_bytes,
            max_wait_seconds=max_wait_seconds,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    def stats(self) -> ApiStats:
        """The counts so far, as an immutable value."""
        return ApiStats(
            requests=tuple((e, c, n) for (e, c), n in sorted(self._requests.items())),
            rate_limit_remaining=self._rate_limit_remaining,
            rate_limit_limit=self._rate_limit_limit,
        )

    async def get_action(
        self, workspace: str, project: str, pipeline_id: int, action_id: int
    ) -> Any:
        """The full action object."""
        path = path_for(
            ACTION_ENDPOINT,
            workspace=workspace,
            project=project,
            pipeline_id=pipeline_id,
            action_id=action_id,
        )
        return await self.get_json(ACTION_ENDPOINT, path)

    def request_total(self) -> int:
        """How many requests were made so far."""
        return sum(self._requests.values())

    async def list_all(
        self,
        endpoint: str,
        path: str,
        key: str,
        per_page: int,
        params: dict[str, Any] | None = None,
        documented_pages: bool = True,
    ) -> list[Any]:
        """Every item of a paginated list endpoint (``{key: [...]}``), or raise :class:`ApiError`.

        Stops on an empty page, on ``total_page_count``, on a page shorter than a full
        page can be, or when the server ignores pagination (more items than asked for,
        or the same short page again). The same full page twice means pagination is
        broken: that raises, so a listing that cannot be complete removes nothing; for
        an endpoint whose pagination is not documented (``documented_pages=False``, the
        action list) it means the server ignores pagination and sent everything.
        """
        items: list[Any] = []
        seen: set[tuple[str, ...]] = set()
        for page in range(1, MAX_PAGES + 1):
            body = await self.get_json(
                endpoint, path, {**(params or {}), "page": page, "per_page": per_page}
            )
            batch = body.get(key) if isinstance(body, dict) else None
            if not isinstance(batch, list):
                raise ApiError(
                    Reason.INVALID_RESPONSE, f"expected a JSON object with a list {key!r}", 200
                )
            if not batch:
                return items
            fingerprint = tuple(
                repr(i.get("id", i.get("name"))) if isinstance(i, dict) else repr(i) for i in batch
            )
            if fingerprint in seen:
                if len(batch) == per_page and documented_pages:
                    raise ApiError(
                        Reason.INVALID_RESPONSE,
                        f"page {page} repeats an earlier page: pagination is broken",
                        200,
                    )
                return items  # the endpoint ignores pagination and returned everything again
            seen.add(fingerprint)
            items.extend(batch)
            total_pages = body.get("total_page_count")
            if isinstance(total_pages, int) and page >= total_pages:
                return items
            if len(batch) > per_page:
                return items  # the endpoint ignores per_page: this was everything
            if len(batch) == per_page:
                self._full_pages_seen.add(endpoint)
            smallest_full_page = (
                per_page if endpoint in self._full_pages_seen else min(per_page, DEFAULT_PAGE_SIZE)
            )
            if len(batch) < smallest_full_page:
                return items
        raise ApiError(Reason.INVALID_RESPONSE, f"more than {MAX_PAGES} pages", 200)

    async def get_json(self, endpoint: str, path: str, params: dict[str, Any] | None = None) -> Any:
        """GET ``path`` and decode its JSON body, or raise :class:`ApiError`.

        ``endpoint`` is the path template, used as the label of the request count.
        """
        workspace = _workspace_of(path)
        attempt = 0
        while True:
            self._check_cooldown(workspace)
            try:
                await self._budget.acquire(self._max_wait)
            except RateLimited as exc:
                raise ApiError(Reason.RATE_LIMITED, f"{exc}; no request made", 429) from None
            self._check_cooldown(workspace)  # another call may have been refused meanwhile
            try:
                status, headers, body = await self._exchange(endpoint, path, params)
            except ApiError as exc:
                if exc.reason not in (Reason.TIMEOUT, Reason.CONNECTION):
                    raise  # a certificate or a body size will not change between attempts
                error = exc
            else:
                if status == 200:
                    self._cooldowns.pop(workspace, None)
                    return self._decode(headers, body)
                error = self._status_error(status, headers, body)
                if status in (401, 403):
                    self._start_cooldown(workspace, error)
                    raise error
                if status == 404:
                    self._cooldowns.pop(workspace, None)
                if status != 429 and status < 500:
                    raise error
            if attempt >= self._max_retries:
                raise error
            attempt += 1
            if error.status != 429:  # after a 429, acquire() waits for the stop to end
                delay = min(self._backoff * 2 ** (attempt - 1), MAX_BACKOFF_SECONDS)
                await self._clock.sleep(delay * (0.5 + self._rng() / 2))
            log.debug("retrying %s (attempt %d): %s", endpoint, attempt + 1, error.detail)

    async def _exchange(
        self, endpoint: str, path: str, params: dict[str, Any] | None
    ) -> tuple[int, httpx.Headers, bytes]:
        """One request: status, headers and body; transport failures as ApiError."""
        status: int | None = None
        try:
            async with asyncio.timeout(self._deadline):
                async with self._http.stream("GET", path, params=params) as response:
                    status = response.status_code
                    limit = self._max_bytes if status == 200 else ERROR_BODY_BYTES
                    body = await _read_capped(response, limit, strict=status == 200)
                    headers = response.headers
        except (TimeoutError, httpx.TimeoutException):
            self._requests[(endpoint, "error")] += 1
            raise ApiError(
                Reason.TIMEOUT,
                f"no complete response within {self._deadline:g}s (buddy.request_timeout_seconds)",
            ) from None
        except httpx.TransportError as exc:
            self._requests[(endpoint, "error")] += 1
            raise self._transport_error(exc) from None
        except httpx.DecodingError:
            self._requests[(endpoint, str(status))] += 1
            raise ApiError(
                Reason.INVALID_RESPONSE,
                "the body does not decode as its Content-Encoding says (a broken proxy?)",
                status,
            ) from None
        except httpx.HTTPError as exc:  # anything else httpx refuses (e.g. an invalid URL)
            self._requests[(endpoint, "error")] += 1
            raise ApiError(
                Reason.CONNECTION, f"{type(exc).__name__}: {self._redact(str(exc))}"
            ) from None
        except _TooLarge:
            self._requests[(endpoint, str(status))] += 1
            raise ApiError(
                Reason.INVALID_RESPONSE,
                f"response body larger than {self._max_bytes} bytes "
                "(buddy.max_response_bytes); not read further",
                status,
            ) from None
        self._requests[(endpoint, str(status))] += 1
        self._record_rate_limit(status, headers)
        return status, headers, body

    def _decode(self, headers: httpx.Headers, body: bytes) -> Any:
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            ctype = headers.get("content-type", "none")
            raise ApiError(
                Reason.INVALID_JSON,
                f"response is not valid JSON (content-type {ctype}, {len(body)} bytes)",
                200,
            ) from None

    def _check_cooldown(self, workspace: str) -> None:
        cooldown = self._cooldowns.get(workspace)
        if cooldown is None:
            return
        left = cooldown.until - self._clock.monotonic()
        if left > 0:
            error = cooldown.error
            raise ApiError(
                error.reason,
                f"{error.detail} (no request made: workspace {workspace or '-'} is left alone "
                f"for another {left:.0f}s after {cooldown.failures} refusal(s))",
                error.status,
            )

    def _start_cooldown(self, workspace: str, error: ApiError) -> None:
        now = self._clock.monotonic()
        previous = self._cooldowns.get(workspace)
        if previous is not None and now < previous.until:
            return  # a call that was already in flight; the same refusal
        failures = previous.failures + 1 if previous else 1
        seconds = min(AUTH_COOLDOWN_SECONDS * 2 ** (failures - 1), MAX_AUTH_COOLDOWN_SECONDS)
        self._cooldowns[workspace] = _Cooldown(failures, now + seconds, error)

    def _record_rate_limit(self, status: int, headers: httpx.Headers) -> None:
        rate = RateHeaders.parse(headers, self._clock.wall())
        self._budget.record(status, rate)
        if rate.remaining is not None:
            self._rate_limit_remaining = rate.remaining
        if rate.limit is not None:
            self._rate_limit_limit = rate.limit

    def _status_error(self, status: int, headers: httpx.Headers, body: bytes) -> ApiError:
        message = None
        with contextlib.suppress(ValueError, UnicodeDecodeError, RecursionError):
            message = error_message(json.loads(body))
        if message is None:
            ctype = headers.get("content-type", "none").split(";")[0]
            message = f"non-JSON body ({ctype}, {len(body)} bytes)"
        return ApiError(
            _reason_for_status(status), f"HTTP {status}: {printable(self._redact(message))}", status
        )

    def _transport_error(self, exc: httpx.TransportError) -> ApiError:
        if isinstance(exc, httpx.ConnectError):
            problem = _tls_problem(exc)
            if problem is not None:
                return ApiError(Reason.TLS, f"TLS error: {self._redact(problem)}")
        text = self._redact(str(exc) or type(exc).__name__)
        return ApiError(Reason.CONNECTION, f"{type(exc).__name__}: {text}")

    def _redact(self, text: str) -> str:
        return text.replace(self._token.get_secret_value(), "<redacted>")
