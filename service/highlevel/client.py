"""HighLevel API client: one small interface, a real implementation over libcurl
(``transport``).

Endpoints (https://highlevel.stoplight.io/docs/integrations/):
- PATCH /invoices/stats/last-visited-at           {"invoiceId": ...}
- PATCH /invoices/estimate/stats/last-visited-at  {"estimateId": ...}
Both need ``Version: 2021-07-28`` and ``Authorization: Bearer <token>``; a 200 has no
documented body, so only the status is read.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import requests
from requests.adapters import HTTPAdapter

from .. import safejson
from .transport import CurlPool, TransportError, build_pool

__all__ = ["HighLevel", "HighLevelClient", "HighLevelError", "RateLimit", "Response",
           "build_pool", "build_session", "parse_rate_limit", "parse_retry_after"]

USER_AGENT = "invoice-view-relay/1.0"
# A header value may not break the line: libcurl would send it as it is.
_UNFIT_FOR_HEADER = re.compile(r"[\r\n\0]")

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
    """The real client: sends over one shared ``CurlPool`` (``build_pool``), a timeout on
    every call, no retries (the forwarder decides what a failure means).

    libcurl rather than ``requests`` or ``urllib3`` on this path: a send is one PATCH with a
    fixed set of headers, and the Python HTTP stack's per-call work (request preparation,
    header checks, parsing the answer's headers through ``email.parser``) was most of a
    send's CPU (``transport``; bench/forward_profile.py).
    """

    def __init__(self, pool: CurlPool, base_url: str, *,
                 version: str = "2021-07-28", timeout: float | tuple = (5.0, 10.0)):
        self.pool = pool
        self.base_url = base_url.rstrip("/")
        self.version = version
        self.connect_timeout, self.read_timeout = (
            timeout if isinstance(timeout, tuple) else (timeout, timeout))
        self._targets = {kind: (self.base_url + path, name)
                         for kind, (path, name) in PATHS.items()}
        self._headers = [f"Version: {version}", "Accept: application/json",
                         "Content-Type: application/json", f"User-Agent: {USER_AGENT}"]

    def mark_viewed(self, *, kind: str, document_id: str, token: str) -> Response:
        url, field_name = self._targets[kind]
        if _UNFIT_FOR_HEADER.search(token):
            # Never echo the value: it is the token.
            raise HighLevelError("InvalidHeader: invalid header value (check the stored "
                                 "token)")
        started = time.monotonic()
        try:
            answer = self.pool.send(
                "PATCH", url, json.dumps({field_name: document_id}).encode(),
                [f"Authorization: Bearer {token}", *self._headers],
                connect_timeout=self.connect_timeout, read_timeout=self.read_timeout)
        except TransportError as exc:
            raise HighLevelError(str(exc)) from None
        latency_ms = int((time.monotonic() - started) * 1000)
        status = answer.status
        message, trace_id = (_error_details(answer.body, answer.reason) if status >= 300
                             else (None, None))
        return Response(
            status=status, message=message, trace_id=trace_id,
            retry_after=parse_retry_after(answer.headers.get("Retry-After")),
            latency_ms=latency_ms, rate_limit=parse_rate_limit(answer.headers),
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
    session.headers["User-Agent"] = USER_AGENT
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


def _error_details(content: bytes, reason: str | None) -> tuple[str | None, str | None]:
    """HighLevel's error ``message`` (a string or a list) and ``traceId``, if JSON."""
    try:
        body = safejson.loads(content)
    except ValueError:
        text = content.decode("utf-8", "replace").strip()
        return (text[:300] or reason), None
    if not isinstance(body, dict):
        return str(body)[:300], None
    message = body.get("message") or body.get("error") or reason
    if isinstance(message, list):
        message = "; ".join(str(m) for m in message)
    trace = body.get("traceId")
    return str(message)[:300], (str(trace)[:64] if trace else None)
