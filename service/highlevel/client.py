"""HighLevel API client: one small interface, a real implementation over ``requests``.

Endpoints (https://highlevel.stoplight.io/docs/integrations/):
- PATCH /invoices/stats/last-visited-at           {"invoiceId": ...}
- PATCH /invoices/estimate/stats/last-visited-at  {"estimateId": ...}
Both need ``Version: 2021-07-28`` and ``Authorization: Bearer <token>``; a 200 has no
documented body, so only the status is read.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import requests
from requests.adapters import HTTPAdapter

from .. import safejson

PATHS = {
    "invoice": ("/invoices/stats/last-visited-at", "invoiceId"),
    "estimate": ("/invoices/estimate/stats/last-visited-at", "estimateId"),
}


class HighLevelError(Exception):
    """HighLevel could not be reached (timeout, connection error): worth a retry."""


@dataclass(frozen=True)
class RateLimit:
    """HighLevel's ``X-RateLimit-*`` headers, where present."""

    max: int | None = None
    remaining: int | None = None
    interval_ms: int | None = None
    daily_limit: int | None = None
    daily_remaining: int | None = None


@dataclass(frozen=True)
class Response:
    status: int
    message: str | None = None
    trace_id: str | None = None
    retry_after: float | None = None
    latency_ms: int = 0
    rate_limit: RateLimit = field(default_factory=RateLimit)


class HighLevel(Protocol):
    def mark_viewed(self, *, kind: str, document_id: str, token: str) -> Response:
        """Tell HighLevel the document was viewed now.

        :raises HighLevelError: no HTTP answer (timeout, connection refused).
        """
        ...


class HighLevelClient:
    """The real client: one pooled ``requests.Session``, a timeout on every call."""

    def __init__(self, session: requests.Session, base_url: str, *,
                 version: str = "2021-07-28", timeout: float | tuple = (5.0, 10.0)):
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.version = version
        self.timeout = timeout

    def mark_viewed(self, *, kind: str, document_id: str, token: str) -> Response:
        path, field_name = PATHS[kind]
        started = time.monotonic()
        try:
            resp = self.session.patch(
                self.base_url + path,
                json={field_name: document_id},
                headers={"Version": self.version, "Authorization": f"Bearer {token}",
                         "Accept": "application/json"},
                timeout=self.timeout,
                allow_redirects=False,
            )
        except requests.Timeout as exc:
            raise HighLevelError(f"timeout: {type(exc).__name__}") from None
        except requests.RequestException as exc:
            # str(exc) of a connection error names host and port; an InvalidHeader (a token
            # with a stray newline) quotes the header value, i.e. the token: redact it.
            if isinstance(exc, requests.exceptions.InvalidHeader):
                text = "invalid header value (check the stored token)"
            else:
                text = _first_line(exc)
            raise HighLevelError(f"{type(exc).__name__}: {text}") from None
        latency_ms = int((time.monotonic() - started) * 1000)
        message, trace_id = _error_details(resp) if resp.status_code >= 300 else (None, None)
        return Response(
            status=resp.status_code, message=message, trace_id=trace_id,
            retry_after=parse_retry_after(resp.headers.get("Retry-After")),
            latency_ms=latency_ms, rate_limit=parse_rate_limit(resp.headers),
        )


def build_session(pool_size: int, base_url: str | None = None) -> requests.Session:
    """A session whose connection pool fits ``pool_size`` concurrent sends.

    Proxy settings (HTTPS_PROXY, NO_PROXY) are read once here: with ``trust_env``
    requests re-reads the environment and stats ~/.netrc on every call, which cost
    more CPU than the rest of a send.
    """
    session = requests.Session()
    session.trust_env = False
    if base_url:
        session.proxies.update(requests.utils.get_environ_proxies(base_url))
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers["User-Agent"] = "invoice-view-relay/1.0"
    return session


def parse_rate_limit(headers: Mapping[str, str]) -> RateLimit:
    """Read ``X-RateLimit-*`` (any case; ``requests`` headers are case-insensitive)."""
    def num(name: str) -> int | None:
        value = headers.get(name)
        try:
            return int(float(value)) if value is not None else None
        except ValueError:
            return None

    return RateLimit(
        max=num("X-RateLimit-Max"), remaining=num("X-RateLimit-Remaining"),
        interval_ms=num("X-RateLimit-Interval-Milliseconds"),
        daily_limit=num("X-RateLimit-Limit-Daily"),
        daily_remaining=num("X-RateLimit-Daily-Remaining"),
    )


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_details(resp: requests.Response) -> tuple[str | None, str | None]:
    """HighLevel's error ``message`` (a string or a list) and ``traceId``, if JSON."""
    try:
        body = safejson.loads(resp.content)  # resp.json() lets a RecursionError through
    except ValueError:
        text = resp.text.strip()
        return (text[:300] or resp.reason), None
    if not isinstance(body, dict):
        return str(body)[:300], None
    message = body.get("message") or body.get("error") or resp.reason
    if isinstance(message, list):
        message = "; ".join(str(m) for m in message)
    trace = body.get("traceId")
    return str(message)[:300], (str(trace)[:64] if trace else None)


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else ""
