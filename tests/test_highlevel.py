"""The real HighLevelClient over real HTTP to the fake HighLevel server on loopback."""

from __future__ import annotations

import datetime as dt
import email.utils
import http.server
import ipaddress
import socket
import ssl
import threading
import time
import uuid

import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from urllib3 import HTTPHeaderDict as CaseInsensitiveDict

from service.forward.forwarder import Forwarder
from service.highlevel.client import (
    HighLevelClient,
    HighLevelError,
    RateLimit,
    build_pool,
    parse_rate_limit,
    parse_retry_after,
)
from service.store.db import delivery_log

from .conftest import make_view
from .fake_highlevel import SPEC_AVAILABLE, SPEC_DIR, FakeHighLevel
from .fakes import InlineExecutor

TOKEN = "pit-7e6d5c4b-secret-token-3a2f"
INVOICE_ID = "6578278e879ad2646715ba9c"
ENDPOINTS = {
    "invoice": ("/invoices/stats/last-visited-at", "invoiceId"),
    "estimate": ("/invoices/estimate/stats/last-visited-at", "estimateId"),
}


@pytest.fixture
def session():
    with build_pool(4) as session:
        yield session


@pytest.fixture
def hl_client(fake_highlevel, session):
    return HighLevelClient(session, fake_highlevel.url, timeout=(2.0, 5.0))


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- requests ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["invoice", "estimate"])
def test_patch_reaches_highlevel_as_documented(fake_highlevel, hl_client, kind):
    fake_highlevel.latency = 0.05  # so the measured latency is known not to be the default 0
    started = time.monotonic()
    resp = hl_client.mark_viewed(kind=kind, document_id=INVOICE_ID, token=TOKEN)
    elapsed_ms = (time.monotonic() - started) * 1000

    assert (resp.status, resp.message, resp.trace_id) == (200, None, None)
    [received] = fake_highlevel.patches()
    path, field = ENDPOINTS[kind]
    assert (received.method, received.path, received.kind) == ("PATCH", path, kind)
    assert received.headers["Version"] == "2021-07-28"
    assert received.headers["Authorization"] == f"Bearer {TOKEN}"
    assert received.headers["Content-Type"] == "application/json"
    assert received.json == {field: INVOICE_ID}
    assert 50 <= resp.latency_ms <= elapsed_ms


def test_rate_limit_headers_are_parsed_from_every_answer(fake_highlevel, hl_client):
    first = hl_client.mark_viewed(kind="invoice", document_id="inv_1", token=TOKEN)
    second = hl_client.mark_viewed(kind="invoice", document_id="inv_2", token=TOKEN)

    assert first.rate_limit == RateLimit(max=100, remaining=99, interval_ms=10_000,
                                         daily_limit=200_000, daily_remaining=199_999)
    assert (second.rate_limit.remaining, second.rate_limit.daily_remaining) == (98, 199_998)


@pytest.mark.parametrize(("status", "message"), [
    (401, "Invalid token: access token is invalid"),
    (403, "The token does not have access to this location."),
    (404, "Invoice not found"),
    (422, "Unprocessable Entity"),
    (429, "Too Many Requests"),
    (503, "Service Unavailable"),
])
def test_error_answers_carry_highlevels_message_and_trace_id(fake_highlevel, hl_client, status,
                                                             message):
    fake_highlevel.script(status)

    resp = hl_client.mark_viewed(kind="invoice", document_id="inv_1", token=TOKEN)

    assert (resp.status, resp.message) == (status, message)
    assert uuid.UUID(resp.trace_id)
    if status == 429:
        assert resp.rate_limit.remaining == 0
        assert resp.rate_limit.interval_ms == 10_000


@pytest.mark.parametrize(("answer", "status", "message"), [
    ((400, {"statusCode": 400, "message": ["invoiceId must be a string", "x is invalid"]}),
     400, "invoiceId must be a string; x is invalid"),
    ((404, {"statusCode": 200, "message": "ok?"}), 404, "ok?"),  # the HTTP status decides
    ((502, "<html>Bad Gateway</html>"), 502, "<html>Bad Gateway</html>"),
    ((503, None), 503, "SERVICE UNAVAILABLE"),  # no body: the reason phrase
    # Nested past Python's recursion limit: RecursionError, not a ValueError (issue 13).
    ((502, "[" * 5000 + "]" * 5000), 502, "[" * 300),
])
def test_odd_error_bodies_are_read_safely(fake_highlevel, hl_client, answer, status, message):
    fake_highlevel.script(answer)

    resp = hl_client.mark_viewed(kind="invoice", document_id="inv_1", token=TOKEN)

    assert (resp.status, resp.message, resp.trace_id) == (status, message, None)


def test_retry_after_header_is_read(fake_highlevel, hl_client):
    fake_highlevel.script((503, None, {"Retry-After": "7"}))

    resp = hl_client.mark_viewed(kind="invoice", document_id="inv_1", token=TOKEN)

    assert (resp.status, resp.retry_after) == (503, 7.0)


def test_wrong_version_header_is_refused_by_the_fake(session):
    with FakeHighLevel(enforce_rate_limit=False) as server:
        client = HighLevelClient(session, server.url, version="2019-01-01", timeout=2.0)
        resp = client.mark_viewed(kind="invoice", document_id="inv_1", token=TOKEN)

    assert resp.status == 400
    assert "Version" in resp.message
    assert len(server.violations) == 1


@pytest.mark.skipif(not SPEC_AVAILABLE, reason=f"HighLevel's OpenAPI documents not at {SPEC_DIR}")
def test_requests_are_checked_against_highlevels_openapi(fake_highlevel, hl_client):
    assert fake_highlevel.validate_openapi
    for kind in ENDPOINTS:
        hl_client.mark_viewed(kind=kind, document_id=INVOICE_ID, token=TOKEN)
    assert len(fake_highlevel.patches()) == 2
    # The fixture's teardown asserts that neither request violated the documents.


def test_sends_reuse_one_kept_alive_connection(fake_highlevel, hl_client):
    # HighLevel's edge keeps connections alive, and so does the fake: a connection (and,
    # against HighLevel, a TLS handshake) per send would cost more than the send.
    for n in range(5):
        assert hl_client.mark_viewed(kind="invoice", document_id=f"inv_{n}",
                                     token=TOKEN).status == 200

    assert len({r.peer for r in fake_highlevel.requests}) == 1


def test_a_stopped_highlevel_refuses_a_kept_alive_connection(session):
    server = FakeHighLevel(enforce_rate_limit=False).start()
    client = HighLevelClient(session, server.url, timeout=1.0)
    assert client.mark_viewed(kind="invoice", document_id="inv_1", token=TOKEN).status == 200
    server.stop()

    with pytest.raises(HighLevelError, match="^ConnectionError"):
        client.mark_viewed(kind="invoice", document_id="inv_2", token=TOKEN)
    assert len(server.requests) == 1


class _ClosingServer(http.server.BaseHTTPRequestHandler):
    """Answers 200 with keep-alive, but closes without an answer the requests whose
    number (1-based, across connections) is in ``server.drop``, as a server's idle
    timeout does when it races a client reusing the connection."""

    protocol_version = "HTTP/1.1"

    def do_PATCH(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.seen.append(self.client_address)
        if len(self.server.seen) in self.server.drop:
            self.close_connection = True
            return
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(("drop", "status", "seen"), [({2}, 200, 3), ({2, 3}, None, 3)])
def test_a_kept_alive_connection_closed_unanswered_is_sent_once_more(session, drop, status,
                                                                      seen):
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ClosingServer) as server:
        server.seen, server.drop = [], drop
        threading.Thread(target=server.serve_forever, daemon=True).start()
        client = HighLevelClient(session, f"http://127.0.0.1:{server.server_port}", timeout=2.0)
        try:
            assert client.mark_viewed(kind="invoice", document_id="inv_1",
                                      token=TOKEN).status == 200
            if status is None:  # closed twice in a row: a transport error, retried later
                with pytest.raises(HighLevelError, match="^ConnectionError") as caught:
                    client.mark_viewed(kind="invoice", document_id="inv_2", token=TOKEN)
                assert TOKEN not in str(caught.value)
            else:
                assert client.mark_viewed(kind="invoice", document_id="inv_2",
                                          token=TOKEN).status == status
        finally:
            server.shutdown()

    assert len(server.seen) == seen  # never more than one extra send
    assert server.seen[0] == server.seen[1] != server.seen[2]  # reused, then a new one


def test_a_proxy_from_the_environment_carries_the_sends(monkeypatch):
    # HTTP_PROXY / HTTPS_PROXY are read once, when the pool is built. The proxy here
    # records the request line (absolute form, as a forward proxy receives it) and answers.
    seen: list[tuple[str, str, dict]] = []

    class Proxy(http.server.BaseHTTPRequestHandler):
        def do_PATCH(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append((self.requestline, body.decode(), dict(self.headers)))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy) as proxy:
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.server_port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        try:
            with build_pool(2, "http://highlevel.invalid") as pool:
                client = HighLevelClient(pool, "http://highlevel.invalid", timeout=2.0)
                resp = client.mark_viewed(kind="estimate", document_id="est_1", token=TOKEN)
        finally:
            proxy.shutdown()

    assert resp.status == 200
    [(line, body, headers)] = seen
    assert line == f"PATCH http://highlevel.invalid{ENDPOINTS['estimate'][0]} HTTP/1.1"
    assert body == '{"estimateId": "est_1"}' and headers["Authorization"] == f"Bearer {TOKEN}"


# -- transport failures --------------------------------------------------------------------


def test_read_timeout_raises_highlevel_error(fake_highlevel, session):
    fake_highlevel.timeout_sleep = 2.0
    fake_highlevel.script("timeout")
    client = HighLevelClient(session, fake_highlevel.url, timeout=0.3)

    with pytest.raises(HighLevelError, match="timeout") as caught:
        client.mark_viewed(kind="invoice", document_id="inv_1", token=TOKEN)

    assert TOKEN not in str(caught.value)
    assert len(fake_highlevel.requests) == 1  # it arrived; the answer never did


def test_connection_refused_raises_highlevel_error_without_the_token(session):
    client = HighLevelClient(session, f"http://127.0.0.1:{closed_port()}", timeout=1.0)

    with pytest.raises(HighLevelError) as caught:
        client.mark_viewed(kind="invoice", document_id="inv_1", token=TOKEN)

    assert str(caught.value).startswith("ConnectionError")
    assert TOKEN not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_an_https_highlevel_with_an_untrusted_certificate_gets_no_token(tmp_path):
    # The token goes only to a server whose certificate a public CA vouches for: a
    # self-signed one on loopback (an impostor) fails the handshake, before any header.
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_PATCH(self):
            seen.append(self.headers.get("Authorization", ""))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler) as server:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            with build_pool(1) as pool:
                client = HighLevelClient(pool, f"https://127.0.0.1:{server.server_port}",
                                         timeout=2.0)
                with pytest.raises(HighLevelError, match="^ConnectionError") as caught:
                    client.mark_viewed(kind="invoice", document_id="inv_1", token=TOKEN)
        finally:
            server.shutdown()

    assert "certificate" in str(caught.value).lower()
    assert TOKEN not in str(caught.value)
    assert seen == []


@pytest.mark.parametrize("bad_token", [TOKEN + "\n", TOKEN + "\r\n", TOKEN[:8] + "\r" + TOKEN[8:]])
def test_a_token_unfit_for_a_header_fails_without_echoing_it(fake_highlevel, hl_client,
                                                             bad_token):
    # requests' InvalidHeader quotes the header value; that message is logged and stored.
    with pytest.raises(HighLevelError, match="InvalidHeader") as caught:
        hl_client.mark_viewed(kind="invoice", document_id="inv_1", token=bad_token)

    assert TOKEN[:8] not in str(caught.value)
    assert TOKEN[8:] not in str(caught.value)
    assert fake_highlevel.requests == []


# -- header parsing ------------------------------------------------------------------------

FULL = {"X-RateLimit-Max": "25", "X-RateLimit-Remaining": "3",
        "X-RateLimit-Interval-Milliseconds": "10000", "X-RateLimit-Limit-Daily": "200000",
        "X-RateLimit-Daily-Remaining": "1234"}
PARSED = RateLimit(max=25, remaining=3, interval_ms=10_000, daily_limit=200_000,
                   daily_remaining=1234)


@pytest.mark.parametrize("headers", [
    FULL,
    CaseInsensitiveDict({k.lower(): v for k, v in FULL.items()}),
    CaseInsensitiveDict({k.upper(): v for k, v in FULL.items()}),
])
def test_parse_rate_limit_in_any_case(headers):
    assert parse_rate_limit(headers) == PARSED


@pytest.mark.parametrize(("headers", "expected"), [
    ({}, RateLimit()),
    ({"X-RateLimit-Max": "100.0", "X-RateLimit-Remaining": "lots"}, RateLimit(max=100)),
    ({"x-ratelimit-max": "25"}, RateLimit()),  # a plain dict is case-sensitive: requests' isn't
])
def test_parse_rate_limit_tolerates_missing_and_junk_values(headers, expected):
    assert parse_rate_limit(headers) == expected


@pytest.mark.parametrize(("value", "seconds"), [
    ("120", 120.0), ("0", 0.0), ("1.5", 1.5), ("-5", 0.0),
    (None, None), ("", None), ("soon", None),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past: now
])
def test_parse_retry_after(value, seconds):
    assert parse_retry_after(value) == seconds


def test_parse_retry_after_http_date_in_the_future():
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)
    value = email.utils.format_datetime(when, usegmt=True)
    assert parse_retry_after(value) == pytest.approx(30, abs=1.5)


# -- end to end: store -> forwarder -> HTTP -> fake ----------------------------------------


def test_forwarder_delivers_through_the_real_client(store, vault, clock, fake_highlevel,
                                                    session):
    client = HighLevelClient(session, fake_highlevel.url, timeout=(2.0, 5.0))
    forwarder = Forwarder(store, vault, client, executor=InlineExecutor(), clock=clock,
                          rand=lambda: 1.0)
    vault.set_token("loc_1", access_token=TOKEN, now=clock())
    views = [make_view(clock()), make_view(clock()),
             make_view(clock(), kind="estimate", document_id="est_1"),
             make_view(clock(), document_id="inv_gone"), make_view(clock(), document_id="inv_busy")]
    accepted = store.record_views(views, now=clock())
    fake_highlevel.script(404, document_id="inv_gone")
    fake_highlevel.script(429, document_id="inv_busy")

    assert forwarder.forward_once(now=clock()) == 4

    sent = sorted((r.path, r.json[ENDPOINTS[r.kind][1]], r.token) for r in fake_highlevel.patches())
    assert sent == [(ENDPOINTS["estimate"][0], "est_1", TOKEN),
                    (ENDPOINTS["invoice"][0], "inv_1", TOKEN)]
    statuses = [store.event_status(a.id) for a in accepted]
    assert [s["status"] for s in statuses] == ["delivered", "delivered", "delivered", "failed",
                                               "queued"]
    assert (statuses[3]["reason"], statuses[3]["message"]) == ("permanent", "Invoice not found")
    with store.engine.connect() as conn:
        log = {row.document_id: row for row in conn.execute(sa.select(delivery_log))}
    assert (log["inv_1"].outcome, log["inv_1"].views_covered) == ("delivered", 2)
    assert log["inv_gone"].trace_id
    assert (log["inv_busy"].outcome, log["inv_busy"].http_status) == ("rate_limited", 429)

    clock.advance(10)  # the 429's X-RateLimit-Interval-Milliseconds
    assert forwarder.forward_once(now=clock()) == 1
    assert store.event_status(accepted[4].id)["status"] == "delivered"
    assert len(fake_highlevel.patches()) == 3
