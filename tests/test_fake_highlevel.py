"""The fake HighLevel server answers real HTTP the way HighLevel does."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from service.highlevel.client import HighLevelClient, RateLimit, build_pool
from tests.fake_highlevel import SPEC_AVAILABLE, SPEC_DIR, FakeHighLevel

TOKEN = "tok-1234567890abcd"
INVOICE = "/invoices/stats/last-visited-at"
ESTIMATE = "/invoices/estimate/stats/last-visited-at"
HEADERS = {"Version": "2021-07-28", "Authorization": f"Bearer {TOKEN}"}
RATE_HEADERS = (
    "X-RateLimit-Max",
    "X-RateLimit-Remaining",
    "X-RateLimit-Interval-Milliseconds",
    "X-RateLimit-Limit-Daily",
    "X-RateLimit-Daily-Remaining",
)
needs_spec = pytest.mark.skipif(
    not SPEC_AVAILABLE, reason=f"../shared/highlevel-openapi not present: {SPEC_DIR}"
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def hl() -> Iterator[FakeHighLevel]:
    with FakeHighLevel(tokens={TOKEN}) as server:
        yield server


def patch(
    hl: FakeHighLevel, path: str = INVOICE, body: object = None, headers=None, **kw
) -> requests.Response:
    body = {"invoiceId": "inv_1"} if body is None else body
    return requests.patch(
        hl.url + path,
        json=body,
        headers=HEADERS if headers is None else headers,
        timeout=kw.pop("timeout", 5),
        **kw,
    )


def test_invoice_patch_ok(hl: FakeHighLevel) -> None:
    r = patch(hl)
    assert r.status_code == 200
    assert r.content == b""
    for name in RATE_HEADERS:
        assert name in r.headers
    assert r.headers["X-RateLimit-Max"] == "100"
    assert r.headers["X-RateLimit-Remaining"] == "99"
    assert r.headers["X-RateLimit-Interval-Milliseconds"] == "10000"
    assert r.headers["X-RateLimit-Limit-Daily"] == "200000"
    assert r.headers["X-RateLimit-Daily-Remaining"] == "199999"
    [rec] = hl.patches()
    assert (rec.kind, rec.document_id, rec.token, rec.status) == ("invoice", "inv_1", TOKEN, 200)
    assert rec.json == {"invoiceId": "inv_1"}
    assert hl.violations == []


def test_estimate_patch_ok(hl: FakeHighLevel) -> None:
    r = patch(hl, ESTIMATE, {"estimateId": "est_9"})
    assert r.status_code == 200
    assert r.content == b""
    assert [(p.kind, p.document_id) for p in hl.patches()] == [("estimate", "est_9")]
    assert hl.violations == []


def test_missing_version_is_400(hl: FakeHighLevel) -> None:
    r = patch(hl, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 400
    body = r.json()
    assert body["statusCode"] == 400 and isinstance(body["message"], str) and body["traceId"]
    assert hl.patches() == []
    assert len(hl.violations) == 1
    if SPEC_AVAILABLE:
        assert hl.violations[0].startswith("openapi:")
        assert "Version" in hl.violations[0]


def test_bad_token_is_401(hl: FakeHighLevel) -> None:
    r = patch(hl, headers={**HEADERS, "Authorization": "Bearer nope"})
    assert r.status_code == 401
    body = r.json()
    assert body.pop("traceId")
    assert body == {
        "statusCode": 401,
        "message": "Invalid token: access token is invalid",
        "error": "Unauthorized",
    }
    assert hl.violations == []  # a present-but-unknown token is not a client bug
    hl.tokens = None  # any non-empty token now accepted
    assert patch(hl, headers={**HEADERS, "Authorization": "Bearer nope"}).status_code == 200


def test_missing_token_is_401_and_violation(hl: FakeHighLevel) -> None:
    r = patch(hl, headers={"Version": "2021-07-28"})
    assert r.status_code == 401
    assert len(hl.violations) == 1


def test_scripted_429_has_no_retry_after(hl: FakeHighLevel) -> None:
    hl.script(429)
    r = patch(hl)
    assert r.status_code == 429
    body = r.json()
    assert body["statusCode"] == 429 and body["message"] == "Too Many Requests"
    assert "Retry-After" not in r.headers
    assert r.headers["X-RateLimit-Remaining"] == "0"
    assert patch(hl).status_code == 200  # script consumed


def test_script_filters_and_tuples(hl: FakeHighLevel) -> None:
    hl.script(404, document_id="inv_2")
    hl.script((502, None, {"X-Custom": "1"}), token="other")
    assert patch(hl).status_code == 200
    r = patch(hl, body={"invoiceId": "inv_2"})
    assert r.status_code == 404 and r.json()["message"] == "Invoice not found"
    hl.tokens = None
    r = patch(hl, headers={**HEADERS, "Authorization": "Bearer other"})
    assert r.status_code == 502 and r.content == b"" and r.headers["X-Custom"] == "1"
    hl.script((500, "<html>oops</html>", {"Content-Type": "text/html"}))
    r = patch(hl)
    assert (r.status_code, r.text, r.headers["Content-Type"]) == (
        500,
        "<html>oops</html>",
        "text/html",
    )


def test_scripted_timeout(hl: FakeHighLevel) -> None:
    hl.timeout_sleep = 0.5
    hl.script("timeout")
    with pytest.raises(requests.exceptions.ReadTimeout):
        patch(hl, timeout=0.1)
    assert len(hl.patches()) == 1  # HighLevel did record it; the client gave up


def test_rate_limit_enforced_with_fake_clock() -> None:
    clock = FakeClock()
    with FakeHighLevel(tokens={TOKEN}, rate_limit_max=3, clock=clock) as hl:
        remaining = [patch(hl).headers["X-RateLimit-Remaining"] for _ in range(3)]
        assert remaining == ["2", "1", "0"]
        r = patch(hl)
        assert r.status_code == 429
        assert r.json()["message"] == "Too Many Requests"
        assert "Retry-After" not in r.headers
        clock.now += 9.9
        assert patch(hl).status_code == 429
        clock.now += 0.1  # window of 10 s elapsed
        r = patch(hl)
        assert r.status_code == 200 and r.headers["X-RateLimit-Remaining"] == "2"
        assert r.headers["X-RateLimit-Daily-Remaining"] == str(200_000 - 4)
        hl.rate_limit_max = 1  # lowered at runtime
        assert patch(hl).status_code == 429
        hl.enforce_rate_limit = False
        assert patch(hl).status_code == 200
        assert hl.violations == []


def test_set_down_gives_503(hl: FakeHighLevel) -> None:
    hl.set_down(True)
    r = patch(hl)
    assert r.status_code == 503 and r.json()["message"] == "Service Unavailable"
    hl.set_down(False)
    assert patch(hl).status_code == 200


def test_latency_is_honored(hl: FakeHighLevel) -> None:
    hl.latency = 0.2
    started = time.monotonic()
    assert patch(hl).status_code == 200
    assert time.monotonic() - started >= 0.2


def test_unknown_route_is_404(hl: FakeHighLevel) -> None:
    r = requests.post(hl.url + INVOICE, json={"invoiceId": "x"}, headers=HEADERS, timeout=5)
    assert r.status_code == 404
    assert len(hl.violations) == 1


@needs_spec
def test_openapi_rejects_missing_invoice_id_and_accepts_correct_body() -> None:
    # tokens=None (any token) and no hand-written check differs: the openapi document decides.
    with FakeHighLevel() as hl:
        assert hl.validate_openapi
        r = patch(hl, body={"estimateId": "wrong-field"})
        assert r.status_code == 400
        assert "invoiceId" in r.json()["message"]
        [violation] = hl.violations
        assert violation.startswith("openapi:") and "invoiceId" in violation
        r = patch(hl, body={"invoiceId": 42})
        assert r.status_code == 400 and len(hl.violations) == 2
        hl.violations.clear()
        assert patch(hl, body={"invoiceId": "6578278e879ad2646715ba9c"}).status_code == 200
        assert hl.violations == []


def test_contract_enforced_without_openapi() -> None:
    with FakeHighLevel(tokens={TOKEN}, validate_openapi=False) as hl:
        assert patch(hl, body={}).status_code == 400
        assert patch(hl, headers={**HEADERS, "Version": "2020-01-01"}).status_code == 400
        r = requests.patch(
            hl.url + INVOICE,
            data="not json",
            timeout=5,
            headers={**HEADERS, "Content-Type": "application/json"},
        )
        assert r.status_code == 400
        assert [v.split(":")[0] for v in hl.violations] == ["contract"] * 3
        assert patch(hl).status_code == 200


# -- the command, on either server ----------------------------------------------------------

@pytest.mark.parametrize("server", ["cheroot", "uvicorn"])
def test_the_command_answers_alike_on_either_server(server):
    # bench/ratelimit.py runs the fake under uvicorn (less CPU a request): the same
    # decisions, headers and keep-alive as under cheroot, the tests' server.
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_highlevel", "--port", "0", "--no-openapi",
         "--rate-limit-max", "3", "--timestamps", "--server", server],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parent.parent)
    try:
        line = proc.stdout.readline()
        assert "listening on http://" in line, line + proc.stderr.read()
        url = line.split("listening on ", 1)[1].split()[0]
        proc.stdout.readline()  # the OAuth app's line
        with build_pool(1) as pool:
            client = HighLevelClient(pool, url, timeout=5.0)
            answers = [client.mark_viewed(kind=kind, document_id=f"doc_{n}",
                                          token="pit-0000-aaaa-1111")
                       for n, kind in enumerate(["invoice", "estimate", "invoice", "invoice"])]
            denied = client.mark_viewed(kind="invoice", document_id="doc_9", token="")
        lines = [proc.stdout.readline() for _ in range(5)]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)

    assert [a.status for a in answers] == [200, 200, 200, 429]
    assert [a.rate_limit.remaining for a in answers] == [2, 1, 0, 0]
    assert answers[0].rate_limit == RateLimit(max=3, remaining=2, interval_ms=10_000,
                                              daily_limit=200_000, daily_remaining=199_999)
    assert answers[3].message == "Too Many Requests"
    assert (denied.status, denied.message) == (401, "Invalid token: access token is invalid")
    assert lines[0].startswith("PATCH /invoices/stats/last-visited-at -> 200 invoice doc_0 "
                               "token=...1111 received=")
    assert lines[1].startswith("PATCH /invoices/estimate/stats/last-visited-at -> 200 "
                               "estimate doc_1")
    assert proc.returncode == 0 and "fake HighLevel stopped" in out
