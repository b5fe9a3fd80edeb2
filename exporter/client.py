"""The Buddy REST API client: one ``httpx.AsyncClient`` per Buddy installation."""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import SecretStr

from exporter import __version__
from exporter.models import error_message

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
    )


class ApiError(Exception):
    """A failed API call; ``reason`` is one of :class:`Reason`. Never carries the token."""

    def __init__(self, reason: str, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.status = status
        self.detail = detail


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


def _header_number(response: httpx.Response, name: str) -> float | None:
    raw = response.headers.get(name)
    if raw is None:
        return None
    try:
        return float(raw.strip())
    except ValueError:
        return None


class BuddyClient:
    """Makes GET requests to one Buddy API base URL and counts them."""

    def __init__(
        self,
        api_url: str,
        token: SecretStr,
        timeout: float,
        max_connections: int = 8,
        verify: ssl.SSLContext | bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
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
        )
        self._requests: Counter[tuple[str, str]] = Counter()
        self._rate_limit_remaining: float | None = None
        self._rate_limit_limit: float | None = None
        self._full_pages_seen: set[str] = set()

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
        path = ACTION_ENDPOINT.format(
            workspace=workspace, project=project, pipeline_id=pipeline_id, action_id=action_id
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
    ) -> list[Any]:
        """Every item of a paginated list endpoint (``{key: [...]}``), or raise :class:`ApiError`.

        Stops on an empty page, on ``total_page_count``, on a page shorter than a full
        page can be, or when the server ignores pagination (more items than asked for,
        or the same short page again). The same full page twice means pagination is
        broken: that raises, so a listing that cannot be complete removes nothing.
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
                if len(batch) == per_page:
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
        """GET ``path`` and decode its JSON body, or raise :class:`ApiError`."""
        try:
            response = await self._http.get(path, params=params)
        except httpx.TimeoutException:
            self._requests[(endpoint, "error")] += 1
            raise ApiError(Reason.TIMEOUT, "request timed out") from None
        except httpx.TransportError as exc:
            self._requests[(endpoint, "error")] += 1
            raise self._transport_error(exc) from None
        self._requests[(endpoint, str(response.status_code))] += 1
        self._record_rate_limit(response)
        if response.status_code != 200:
            raise self._status_error(response)
        try:
            return json.loads(response.content)
        except (ValueError, UnicodeDecodeError):
            ctype = response.headers.get("content-type", "none")
            raise ApiError(
                Reason.INVALID_JSON,
                f"response is not valid JSON (content-type {ctype}, {len(response.content)} bytes)",
                response.status_code,
            ) from None

    def _record_rate_limit(self, response: httpx.Response) -> None:
        remaining = _header_number(response, "X-Rate-Limit-Remaining")
        limit = _header_number(response, "X-Rate-Limit-Limit")
        if remaining is not None:
            self._rate_limit_remaining = remaining
        if limit is not None:
            self._rate_limit_limit = limit

    def _status_error(self, response: httpx.Response) -> ApiError:
        status = response.status_code
        message = None
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            message = error_message(json.loads(response.content))
        if message is None:
            ctype = response.headers.get("content-type", "none").split(";")[0]
            message = f"non-JSON body ({ctype}, {len(response.content)} bytes)"
        return ApiError(
            _reason_for_status(status), f"HTTP {status}: {self._redact(message)}", status
        )

    def _transport_error(self, exc: httpx.TransportError) -> ApiError:
        text = self._redact(str(exc) or type(exc).__name__)
        if isinstance(exc, httpx.ConnectError) and (
            "CERTIFICATE_VERIFY_FAILED" in text or "SSL" in text or "certificate" in text.lower()
        ):
            return ApiError(Reason.TLS, f"TLS error: {text}")
        return ApiError(Reason.CONNECTION, f"{type(exc).__name__}: {text}")

    def _redact(self, text: str) -> str:
        return text.replace(self._token.get_secret_value(), "<redacted>")
