"""A fake HighLevel API on loopback for end-to-end tests, benchmarks and a local demo.

Answers ``PATCH /invoices/stats/last-visited-at`` and
``PATCH /invoices/estimate/stats/last-visited-at`` the way HighLevel does (status codes, error
bodies, rate-limit headers), and HighLevel's OAuth calls (``POST /oauth/token``,
``POST /oauth/locationToken``: see ``tests/fake_oauth.py``, reached as ``fake.oauth``). When
``../shared/highlevel-openapi`` exists next to the project, every request is validated against
HighLevel's own OpenAPI documents (``apps/invoices.json``, ``apps/oauth.json``).

Demo: ``python -m tests.fake_highlevel --port 9100 [--latency 0.1] [--no-rate-limit]``.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from cheroot import wsgi as cheroot_wsgi
from werkzeug.wrappers import Request, Response

from .fake_oauth import OAUTH_PREFIX, FakeOAuth, oauth_contract_error
from .highlevel_openapi import (
    AUTH_ERRORS,
    NOT_FOUND_ERRORS,
    SPEC_AVAILABLE,
    SPEC_DIR,
    load_openapis,
    openapi_violation,
)

__all__ = ["SPEC_AVAILABLE", "SPEC_DIR", "FakeHighLevel", "FakeOAuth", "ReceivedRequest"]

API_VERSION = "2021-07-28"
ENDPOINTS = {  # path -> (kind, body field holding the document id)
    "/invoices/stats/last-visited-at": ("invoice", "invoiceId"),
    "/invoices/estimate/stats/last-visited-at": ("estimate", "estimateId"),
}
UNAUTHORIZED = {
    "statusCode": 401,
    "message": "Invalid token: access token is invalid",
    "error": "Unauthorized",
}
CANNED_MESSAGES = {
    400: "Bad Request",
    403: "The token does not have access to this location.",
    404: "Invoice not found",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


@dataclass
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: object | None
    status: int  # 0 until decided (set before any latency sleep)
    at: float  # time.monotonic() when received
    token: str | None
    document_id: str | None
    kind: str | None  # "invoice" | "estimate"
    peer: str = ""  # the client's address and port: one per connection


class FakeHighLevel:
    def __init__(
        self,
        *,
        tokens: set[str] | None = None,
        latency: float = 0.0,
        rate_limit_max: int = 100,
        rate_limit_interval_ms: int = 10_000,
        daily_limit: int = 200_000,
        enforce_rate_limit: bool = True,
        validate_openapi: bool = True,
        clock: Callable[[], float] = time.monotonic,
        on_request: Callable[[ReceivedRequest], None] | None = None,
    ) -> None:
        self.tokens = tokens
        self.latency = latency
        self.rate_limit_max = rate_limit_max
        self.rate_limit_interval_ms = rate_limit_interval_ms
        self.daily_limit = daily_limit
        self.enforce_rate_limit = enforce_rate_limit
        self.validate_openapi = validate_openapi and SPEC_AVAILABLE
        self.clock = clock
        self.on_request = on_request  # called after each answer (demo printing)
        self.timeout_sleep = 3.0
        self.requests: list[ReceivedRequest] = []
        self.violations: list[str] = []
        self.url = ""
        self._down = False
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0
        self._stopping = threading.Event()
        # (answer, document id, token, path): path None matches the PATCH endpoints only
        self._script: list[tuple[int | str | tuple, str | None, str | None, str | None]] = []
        self._windows: dict[str | None, list[float]] = {}  # token -> [burst start, count]
        self._daily: dict[str | None, list[float]] = {}  # token -> [day start, count]
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.oauth = FakeOAuth(self)  # /oauth/token and /oauth/locationToken
        if self.validate_openapi:
            load_openapis()  # load now so the first request isn't slow

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self, host: str = "127.0.0.1", port: int = 0, *,
              threads: int = 128) -> FakeHighLevel:
        """Serve on ``host:port`` (0: any free port) with cheroot: HTTP/1.1 with keep-alive,
        as HighLevel's edge does (werkzeug's development server closes every connection, so
        each send paid for a new one), ``threads`` requests answered at once (its latency is
        a sleep in a thread)."""
        self._stopping.clear()
        self._server = cheroot_wsgi.Server((host, port), self._wsgi, numthreads=threads,
                                           request_queue_size=1024, shutdown_timeout=5)
        self._server.keep_alive_conn_limit = 1024  # cheroot's default closes past 10 idle
        self._server.prepare()  # binds, so the port is known before serving
        self.url = f"http://{host}:{self._server.bind_addr[1]}"
        self._thread = threading.Thread(
            target=self._server.serve, daemon=True, name=f"fake-highlevel-{self.url}",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every connection, kept-alive ones too (a stopped fake
        refuses, as a HighLevel that is down would)."""
        if self._server is None:
            return
        self._stopping.set()  # cuts latency / "timeout" sleeps short
        with self._idle:  # let answers in flight finish, so their sockets close cleanly
            self._idle.wait_for(lambda: self._in_flight == 0, timeout=5)
        self._server.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeHighLevel:
        return self if self._server is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- test controls -----------------------------------------------------------------
    def patches(self) -> list[ReceivedRequest]:
        return [r for r in list(self.requests) if r.method == "PATCH" and r.status == 200]

    def script(
        self,
        *statuses_or_responses: int | str | tuple,
        document_id: str | None = None,
        token: str | None = None,
        path: str | None = None,
    ) -> None:
        """Canned answers for the next matching requests, in order: a status, "timeout" (the
        request is applied, its answer comes ``timeout_sleep`` late) or (status, body, headers).
        Without ``path`` they match the PATCH endpoints only; an OAuth call is matched only by
        its path (e.g. ``path="/oauth/token"``), and a canned answer there changes nothing
        (except "timeout")."""
        with self._lock:
            self._script.extend((s, document_id, token, path) for s in statuses_or_responses)

    def set_down(self, down: bool) -> None:
        self._down = down

    # ---- request handling --------------------------------------------------------------
    def _wsgi(self, environ: dict, start_response: Callable) -> Any:
        with self._lock:
            self._in_flight += 1
        try:
            return self._handle(Request(environ))(environ, start_response)
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def _handle(self, request: Request) -> Response:
        rec, payload, headers, delay = self.receive(
            request.method, request.path, dict(request.headers), request.get_data(cache=True),
            f"{request.environ.get('REMOTE_ADDR')}:{request.environ.get('REMOTE_PORT')}",
            request)
        if self.latency > 0 or delay > 0:
            self._stopping.wait(self.latency + delay)  # outside any lock: requests overlap
        response = Response(payload or b"", status=rec.status, mimetype="application/json")
        if not payload:
            del response.headers["Content-Type"]
        response.headers.update(headers)
        if self.on_request is not None:
            self.on_request(rec)
        return response

    def receive(self, method: str, path: str, headers: dict[str, str], body: bytes,
                peer: str, request: Request | None = None
                ) -> tuple[ReceivedRequest, bytes | str | None, dict[str, str], float]:
        """Record one request and decide its answer: the record (its status set), the
        body, the headers, and a delay on top of the latency. The server waits, answers,
        then calls ``on_request``. ``request``: werkzeug's, for the OpenAPI check (None:
        no such check; ``tests/fake_highlevel_asgi.py``)."""
        auth = headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        token = token.strip() if scheme.lower() == "bearer" and token.strip() else None
        parsed: object | None = None
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            pass
        kind, field = ENDPOINTS.get(path, (None, None))
        doc_id = parsed.get(field) if isinstance(parsed, dict) and field else None
        rec = ReceivedRequest(method, path, headers, body, parsed, 0, time.monotonic(), token,
                              doc_id if isinstance(doc_id, str) else None, kind, peer)
        with self._lock:
            self.requests.append(rec)
        violation = self._violation(request, rec)
        # The status is known (and patches() sees the request) before the answer is sent,
        # like HighLevel having applied a PATCH whose response is slow or never arrives.
        decide = self._decide_oauth if rec.path.startswith(OAUTH_PREFIX) else self._decide
        rec.status, payload, out, delay = decide(rec, violation)
        if payload is not None and not isinstance(payload, (bytes, str)):
            payload = json.dumps(payload)
        return rec, payload, out, delay

    def _violation(self, request: Request | None,
                   rec: ReceivedRequest) -> tuple[int, str] | None:
        """Check the request against the contract (and OpenAPI document); record any breach."""
        found, source = contract_error(rec), "contract"
        oa = openapi_violation(request) if self.validate_openapi and request else None
        if oa is not None:
            kind, text = oa
            status = 404 if kind in NOT_FOUND_ERRORS else 401 if kind in AUTH_ERRORS else 400
            found, source = (status, text), "openapi"
        if found is not None:
            with self._lock:
                self.violations.append(f"{source}: {rec.method} {rec.path}: {found[1]}")
        return found

    def _decide(
        self, rec: ReceivedRequest, violation: tuple[int, str] | None
    ) -> tuple[int, object | None, dict[str, str], float]:
        with self._lock:
            if self._down:
                return 503, _error(503), self._limits(rec.token, spend=False), 0.0
            for i, (entry, doc, tok, path) in enumerate(self._script):
                if path in (None, rec.path) and doc in (None, rec.document_id) \
                        and tok in (None, rec.token):
                    del self._script[i]
                    return self._canned(entry, rec.token)
            if violation is not None and violation[0] == 404:
                body = {
                    "statusCode": 404,
                    "message": f"Cannot {rec.method} {rec.path}",
                    "error": "Not Found",
                }
                return 404, _traced(body), self._limits(rec.token, spend=False), 0.0
            tokens = self.tokens
            if rec.token is None or (tokens is not None and rec.token not in tokens) \
                    or self.oauth.is_expired(rec.token):
                return 401, _traced(dict(UNAUTHORIZED)), self._limits(rec.token, False), 0.0
            limited = self.enforce_rate_limit and self._spent(rec.token)
            headers = self._limits(rec.token, spend=not limited)
            if limited:
                return 429, _error(429), headers, 0.0
            if violation is not None:
                return 400, _error(400, violation[1]), headers, 0.0
            return 200, None, headers, 0.0

    def _decide_oauth(
        self, rec: ReceivedRequest, violation: tuple[int, str] | None
    ) -> tuple[int, object | None, dict[str, str], float]:
        """An OAuth call: down, scripted, not found, or answered by ``self.oauth``."""
        delay = 0.0
        with self._lock:
            if self._down:
                return 503, _error(503), {}, 0.0
            for i, (entry, _doc, tok, path) in enumerate(self._script):
                if path == rec.path and tok in (None, rec.token):
                    del self._script[i]
                    if entry != "timeout":
                        return self._canned(entry, rec.token)
                    delay = self.timeout_sleep  # applied below; the answer comes late
                    break
        if violation is not None and violation[0] == 404:
            body = {"statusCode": 404, "message": f"Cannot {rec.method} {rec.path}",
                    "error": "Not Found"}
            return 404, _traced(body), {}, 0.0
        status, body = self.oauth.handle(rec, violation)
        return status, body, {}, delay

    def _canned(
        self, entry: int | str | tuple, token: str | None
    ) -> tuple[int, object | None, dict[str, str], float]:
        headers = self._limits(token, spend=False)
        if entry == "timeout":
            return 200, None, headers, self.timeout_sleep
        if isinstance(entry, tuple):
            status, body, extra = (tuple(entry) + (None, None))[:3]
            return int(status), body, {**headers, **(extra or {})}, 0.0
        if entry == 429:
            headers["X-RateLimit-Remaining"] = "0"
        body = _traced(dict(UNAUTHORIZED)) if entry == 401 else _error(int(entry))
        return int(entry), body, headers, 0.0

    # ---- rate limiting (caller holds self._lock) ---------------------------------------
    def _window(self, table: dict, token: str | None, length: float) -> list[float]:
        now = self.clock()
        win = table.setdefault(token, [now, 0])
        if now - win[0] >= length:
            win[:] = [now, 0]
        return win

    def _spent(self, token: str | None) -> bool:
        burst = self._window(self._windows, token, self.rate_limit_interval_ms / 1000)
        daily = self._window(self._daily, token, 86_400.0)
        return burst[1] >= self.rate_limit_max or daily[1] >= self.daily_limit

    def _limits(self, token: str | None, spend: bool) -> dict[str, str]:
        burst = self._window(self._windows, token, self.rate_limit_interval_ms / 1000)
        daily = self._window(self._daily, token, 86_400.0)
        if spend:
            burst[1] += 1
            daily[1] += 1
        return {
            "X-RateLimit-Max": str(self.rate_limit_max),
            "X-RateLimit-Remaining": str(max(0, self.rate_limit_max - int(burst[1]))),
            "X-RateLimit-Interval-Milliseconds": str(self.rate_limit_interval_ms),
            "X-RateLimit-Limit-Daily": str(self.daily_limit),
            "X-RateLimit-Daily-Remaining": str(max(0, self.daily_limit - int(daily[1]))),
        }


def contract_error(rec: ReceivedRequest) -> tuple[int, str] | None:
    """The hand-written HighLevel contract (used with or without the OpenAPI documents)."""
    if rec.path.startswith(OAUTH_PREFIX):
        return oauth_contract_error(rec)
    if rec.kind is None or rec.method != "PATCH":
        return 404, f"Cannot {rec.method} {rec.path}"
    if rec.token is None:
        return 401, UNAUTHORIZED["message"]
    version = rec.headers.get("Version")
    if version != API_VERSION:
        return 400, (
            "Version header was not found"
            if version is None
            else f"Version header must be {API_VERSION}, got {version!r}"
        )
    if rec.headers.get("Content-Type", "").split(";")[0].strip().lower() != "application/json":
        return 400, "Content-Type must be application/json"
    field = ENDPOINTS[rec.path][1]
    if not isinstance(rec.json, dict):
        return 400, "Request body must be a JSON object"
    if field not in rec.json:
        return 400, f"{field} is required"
    if not isinstance(rec.json[field], str):
        return 400, f"{field} must be a string"
    return None


def _traced(body: dict) -> dict:
    body["traceId"] = str(uuid.uuid4())
    return body


def _error(status: int, message: str | None = None) -> dict:
    if message is None:
        message = CANNED_MESSAGES.get(status) or HTTPStatus(status).phrase
    return _traced({"statusCode": status, "message": message})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake HighLevel API for local demos.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--no-rate-limit", action="store_true")
    parser.add_argument("--token", action="append", help="accepted token (default: any)")
    parser.add_argument("--rate-limit-max", type=int, default=100,
                        help="requests per token per window (X-RateLimit-Max)")
    parser.add_argument("--interval-ms", type=int, default=10_000,
                        help="rate-limit window (X-RateLimit-Interval-Milliseconds)")
    parser.add_argument("--no-openapi", action="store_true",
                        help="skip OpenAPI validation (saves CPU in benchmarks)")
    parser.add_argument("--threads", type=int, default=512,
                        help="requests answered at once (each waits out --latency in a thread)")
    parser.add_argument("--server", choices=("cheroot", "uvicorn"), default="cheroot",
                        help="cheroot (the tests' server) or uvicorn (C parsing, an event "
                             "loop: less CPU a request; needs --no-openapi)")
    parser.add_argument("--timestamps", action="store_true",
                        help="end each line with received= and answered= (time.monotonic())")
    args = parser.parse_args(argv)

    def show(r: ReceivedRequest) -> None:
        tail = f"...{r.token[-4:]}" if r.token and len(r.token) > 8 else "****" if r.token else "-"
        print(
            f"{r.method} {r.path} -> {r.status} {r.kind or '-'} {r.document_id or '-'} "
            f"token={tail}"
            + (f" received={r.at:.6f} answered={time.monotonic():.6f}" if args.timestamps else ""),
            flush=True,
        )

    hl = FakeHighLevel(
        tokens=set(args.token) if args.token else None,
        latency=args.latency,
        enforce_rate_limit=not args.no_rate_limit,
        rate_limit_max=args.rate_limit_max,
        rate_limit_interval_ms=args.interval_ms,
        validate_openapi=not args.no_openapi,
        on_request=show,
    )

    def listening(url: str) -> None:
        openapi = ("on" if hl.validate_openapi else "off (--no-openapi)" if args.no_openapi
                   else f"off ({SPEC_DIR} not present)")
        print(f"fake HighLevel listening on {url} (openapi validation {openapi}, "
              f"{args.server})", flush=True)
        print(f"OAuth app: client_id={hl.oauth.client_id} client_secret={hl.oauth.client_secret}",
              flush=True)

    if args.server == "uvicorn":
        from .fake_highlevel_asgi import serve

        serve(hl, args.host, args.port, listening=listening)  # until SIGINT / SIGTERM
    else:
        done = threading.Event()
        signal.signal(signal.SIGINT, lambda *_: done.set())
        signal.signal(signal.SIGTERM, lambda *_: done.set())
        with hl.start(args.host, args.port, threads=args.threads):
            listening(hl.url)
            while not done.wait(0.5):
                pass
    print("fake HighLevel stopped", flush=True)


if __name__ == "__main__":
    main()
