"""HighLevel API client: one small interface, a real implementation over ``urllib3``.

Endpoints (https://highlevel.stoplight.io/docs/integrations/):
- PATCH /invoices/stats/last-visited-at           {"invoiceId": ...}
- PATCH /invoices/estimate/stats/last-visited-at  {"estimateId": ...}
Both need ``Version: 2021-07-28`` and ``Authorization: Bearer <token>``; a 200 has no
documented body, so only the status is read.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import requests
import urllib3
from requests.adapters import HTTPAdapter

from .. import safejson

USER_AGENT = "invoice-view-relay/1.0"
_TIMEOUTS = {urllib3.exceptions.ReadTimeoutError: "ReadTimeout",
             urllib3.exceptions.ConnectTimeoutError: "ConnectTimeout"}

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
    """The real client: one pooled ``urllib3.PoolManager`` (``build_pool``), a timeout on
    every call, no retries (the forwarder decides what a failure means).

    urllib3 rather than ``requests`` on this path: a send is one PATCH with a fixed set of
    headers, and ``requests``' per-call request preparation (settings merge, hooks, cookie
    jar, runtime protocol checks) cost more CPU than the rest of the send
    (bench/forward_profile.py).
    """

    def __init__(self, pool: urllib3.PoolManager, base_url: str, *,
                 version: str = "2021-07-28", timeout: float | tuple = (5.0, 10.0)):
        self.pool = pool
        self.base_url = base_url.rstrip("/")
        self.version = version
        connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        self.timeout = urllib3.Timeout(connect=connect, read=read)
        # Without a proxy, straight to the host's connection pool with the path (the
        # manager's per-call URL parsing and pool look-up cost ~0.06 ms a send); through a
        # proxy, the manager, which knows the proxy's request forms.
        direct = not isinstance(pool, urllib3.ProxyManager)
        self._open = (pool.connection_from_url(self.base_url) if direct else pool).urlopen
        self._targets = {kind: (path if direct else self.base_url + path, name)
                         for kind, (path, name) in PATHS.items()}

    def mark_viewed(self, *, kind: str, document_id: str, token: str) -> Response:
        target, field_name = self._targets[kind]
        started = time.monotonic()
        try:
            resp = self._send(target, json.dumps({field_name: document_id}).encode(), token)
        except urllib3.exceptions.NewConnectionError as exc:  # before TimeoutError, its base
            raise HighLevelError(f"ConnectionError: {_first_line(exc)}") from None
        except urllib3.exceptions.TimeoutError as exc:
            raise HighLevelError(f"timeout: {_TIMEOUTS.get(type(exc), 'Timeout')}") from None
        except ValueError:
            # http.client refuses a header value with a stray newline and quotes it, i.e.
            # the token: never echo it.
            raise HighLevelError("InvalidHeader: invalid header value (check the stored "
                                 "token)") from None
        except urllib3.exceptions.HTTPError as exc:
            # str(exc) of a connection error names host and port, never a header.
            raise HighLevelError(f"ConnectionError: {_first_line(exc)}") from None
        latency_ms = int((time.monotonic() - started) * 1000)
        status = resp.status
        message, trace_id = (_error_details(resp.data, resp.reason) if status >= 300
                             else (None, None))
        return Response(
            status=status, message=message, trace_id=trace_id,
            retry_after=parse_retry_after(resp.headers.get("Retry-After")),
            latency_ms=latency_ms, rate_limit=parse_rate_limit(resp.headers),
        )


    def _send(self, target: str, body: bytes, token: str):
        """One PATCH; sent once more on a new connection when a kept-alive one turns out
        closed before any answer (the server's idle timeout racing our reuse of it)."""
        headers = {"Version": self.version, "Authorization": f"Bearer {token}",
                   "Accept": "application/json", "Content-Type": "application/json",
                   "User-Agent": USER_AGENT}
        for last in (False, True):
            try:
                return self._open("PATCH", target, body=body, headers=headers,
                                  timeout=self.timeout, retries=_NO_RETRY, redirect=False)
            except urllib3.exceptions.ProtocolError as exc:
                # HighLevel never answered the first: at most it records the view twice,
                # at the same moment (delivery is at least once anyway).
                if last or not isinstance(exc.args[-1], _CLOSED_UNANSWERED):
                    raise
        raise AssertionError("unreachable")


# retries=False made urlopen build this Retry for every send (~3 us); it is immutable.
_NO_RETRY = urllib3.Retry(False, redirect=False)
# A kept-alive connection the server had closed: nothing of an answer was read.
_CLOSED_UNANSWERED = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


def build_pool(pool_size: int, base_url: str | None = None) -> urllib3.PoolManager:
    """A connection pool that keeps ``pool_size`` connections per host alive, for that many
    concurrent sends (``block``: a send beyond that waits rather than opening a throwaway
    connection). A proxy from HTTPS_PROXY / HTTP_PROXY / NO_PROXY is read once, here."""
    proxy = requests.utils.get_environ_proxies(base_url).get(
        base_url.split(":", 1)[0]) if base_url else None
    if proxy:
        return urllib3.ProxyManager(proxy, num_pools=4, maxsize=pool_size, block=True)
    return urllib3.PoolManager(num_pools=4, maxsize=pool_size, block=True)


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


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else ""
