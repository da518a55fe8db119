"""OAuth token lifecycle against the fake HighLevel: install, refresh, mint, park."""

from __future__ import annotations

import datetime as dt
import logging
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa

from service import create_app
from service.forward.credentials import TokenProvider
from service.forward.forwarder import Forwarder
from service.highlevel.client import HighLevelClient, build_pool
from service.store.db import installs

from .conftest import (
    ADMIN_KEY,
    FERNET_KEY,
    INGEST_KEY,
    PG_URL,
    PIXEL_KEY,
    SESSION_KEY,
    make_view,
    test_config,
)
from .fake_highlevel import FakeHighLevel
from .fakes import InlineExecutor

ROOT = Path(__file__).resolve().parent.parent
LOC, COMPANY = "loc_oauth_1", "company_1"


@pytest.fixture
def hl():
    with FakeHighLevel(tokens=set(), enforce_rate_limit=False) as server:
        yield server
    assert server.violations == [], server.violations


@pytest.fixture
def app(migrated_db_url, clock, hl):
    app = create_app(test_config(migrated_db_url, HIGHLEVEL_BASE_URL=hl.url,
                                 HIGHLEVEL_CLIENT_ID=hl.oauth.client_id,
                                 HIGHLEVEL_CLIENT_SECRET=hl.oauth.client_secret,
                                 PUBLIC_BASE_URL="https://relay.example"))
    app.extensions["service"].clock = clock
    yield app
    app.extensions["service"].engine.dispose()


@pytest.fixture
def forwarder(services, hl, clock):
    return Forwarder(services.store, services.vault,
                     HighLevelClient(build_pool(4, hl.url), hl.url),
                     executor=InlineExecutor(), clock=clock, rand=lambda: 1.0,
                     tokens=TokenProvider(services.vault, services.oauth))


def store_pair(services, pair, *, now, location=LOC, kind="oauth"):
    services.vault.set_token(location, access_token=pair["access_token"],
                             refresh_token=pair.get("refresh_token"), token_kind=kind,
                             expires_at=now + dt.timedelta(seconds=pair["expires_in"]),
                             company_id=pair.get("companyId"), now=now)


def start_install(client) -> str:
    resp = client.get("/oauth/install")
    assert resp.status_code == 302
    target = urlsplit(resp.headers["Location"])
    assert f"{target.scheme}://{target.netloc}{target.path}" == (
        "https://marketplace.gohighlevel.com/v2/oauth/chooselocation")
    query = parse_qs(target.query)
    assert query["client_id"] == ["test-client-id"]
    assert query["redirect_uri"] == ["https://relay.example/oauth/callback"]
    assert query["response_type"] == ["code"]
    assert "invoices.write" in query["scope"][0]
    return query["state"][0]


def test_install_round_trip_stores_the_location_token(client, services, hl, clock):
    state = start_install(client)
    code = hl.oauth.authorize(location_id=LOC, company_id=COMPANY,
                              redirect_uri="https://relay.example/oauth/callback")
    resp = client.get(f"/oauth/callback?code={code}&state={state}")
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert f"location {LOC}" in resp.get_data(as_text=True)
    summary = services.vault.describe(LOC)
    assert (summary["tokenKind"], summary["status"], summary["companyId"]) == (
        "oauth", "active", COMPANY)
    assert summary["expiresAt"] == clock() + dt.timedelta(seconds=86399)
    with services.engine.connect() as conn:
        row = conn.execute(sa.select(installs)).one()
    assert (row.target_type, row.target_id, row.company_id, row.status) == (
        "location", LOC, COMPANY, "installed")
    [request] = [r for r in hl.requests if r.path == "/oauth/token"]
    assert b"grant_type=authorization_code" in request.body
    # The stored token works end to end.
    assert services.vault.read(LOC).access_token() in hl.tokens


def test_agency_install_stores_the_company_token_and_its_locations(client, services, hl):
    state = start_install(client)
    code = hl.oauth.authorize(user_type="Company", company_id=COMPANY,
                              approved_locations=["loc_a", "loc_b"])
    resp = client.get(f"/oauth/callback?code={code}&state={state}")
    assert resp.status_code == 200
    assert services.vault.describe(COMPANY)["tokenKind"] == "agency"
    assert services.vault.describe("loc_a") is None  # minted when first needed
    with services.engine.connect() as conn:
        rows = conn.execute(sa.select(installs.c.target_id, installs.c.company_id)
                            .where(installs.c.target_type == "location")).all()
    assert sorted(rows) == [("loc_a", COMPANY), ("loc_b", COMPANY)]


@pytest.mark.parametrize("approved", [1, 6])
def test_an_agency_install_is_one_transaction_however_many_locations(client, services, hl,
                                                                     clock, approved):
    """The state is spent in a commit of its own (before HighLevel sees the code); the
    agency's token, every install row and the release of the parked views are one more."""
    approved_ids = [f"loc_{n}" for n in range(approved)]
    services.store.record_views([make_view(clock(), location_id=loc) for loc in approved_ids],
                                now=clock())
    for location_id in approved_ids:  # waiting for a token
        services.store.block_location(location_id, now=clock())
    assert services.store.queue_depth() == {"blocked": approved}
    state = start_install(client)
    code = hl.oauth.authorize(user_type="Company", company_id=COMPANY,
                              approved_locations=approved_ids)
    commits = []

    def count(conn):
        commits.append("commit")

    sa.event.listen(services.engine, "commit", count)
    try:
        resp = client.get(f"/oauth/callback?code={code}&state={state}")
    finally:
        sa.event.remove(services.engine, "commit", count)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert f"({approved} locations)" in resp.get_data(as_text=True)
    assert len(commits) == 2
    assert services.vault.describe(COMPANY)["tokenKind"] == "agency"
    with services.engine.connect() as conn:
        rows = conn.execute(sa.select(installs.c.target_type, installs.c.target_id,
                                      installs.c.status)).all()
    assert sorted(rows) == sorted([("company", COMPANY, "installed")] + [
        ("location", loc, "installed") for loc in approved_ids])
    assert services.store.queue_depth() == {"pending": approved}  # released, to be minted


@pytest.mark.parametrize("query", [
    "error=access_denied",
    "code=abc",  # no state
    "state=xyz&code=abc",  # a state this relay did not make
    "code=" + "x" * 600 + "&state=s",
])
def test_callback_errors_show_a_page_and_store_nothing(client, services, query):
    resp = client.get(f"/oauth/callback?{query}")
    assert resp.status_code == 400
    assert resp.headers["Content-Type"].startswith("text/html")
    assert "Not installed" in resp.get_data(as_text=True)
    assert services.vault.list() == []


def test_callback_with_a_code_highlevel_refuses_stores_nothing(client, services, hl):
    state = start_install(client)
    resp = client.get(f"/oauth/callback?code=never-issued&state={state}")
    assert resp.status_code == 502
    assert "Nothing was stored" in resp.get_data(as_text=True)
    assert services.vault.list() == []


INSTALL_COOKIE = "relay_oauth_install"  # what /oauth/install sets in the browser
CALLBACK = "https://relay.example/oauth/callback"


def code_exchanges(hl) -> int:
    """Authorization codes HighLevel was asked to exchange (POST /oauth/token)."""
    return sum(1 for form in hl.oauth.token_requests
               if form.get("grant_type") == "authorization_code")


def install_cookie(client) -> str:
    cookie = client.get_cookie(INSTALL_COOKIE, path="/oauth")
    assert cookie is not None, "/oauth/install set no install cookie"
    return cookie.value


def test_install_cookie_is_httponly_lax_and_scoped_to_oauth(client):
    start_install(client)
    [header] = [h for h in client.get("/oauth/install").headers.getlist("Set-Cookie")
                if h.startswith(f"{INSTALL_COOKIE}=")]
    attributes = {part.strip().split("=")[0].lower() for part in header.split(";")[1:]}
    assert {"httponly", "path", "samesite", "max-age"} <= attributes, header
    assert "; Path=/oauth" in header and "SameSite=Lax" in header, header
    assert "secure" not in attributes, header  # RELAY_ENV=test: plain http works locally


def test_install_cookie_is_secure_in_production(migrated_db_url, hl):
    app = create_app(test_config(migrated_db_url, RELAY_ENV="production",
                                 PUBLIC_BASE_URL="https://relay.example",
                                 HIGHLEVEL_CLIENT_ID=hl.oauth.client_id,
                                 HIGHLEVEL_CLIENT_SECRET=hl.oauth.client_secret))
    try:
        headers = app.test_client().get("/oauth/install").headers.getlist("Set-Cookie")
    finally:
        app.extensions["service"].engine.dispose()
    [header] = [h for h in headers if h.startswith(f"{INSTALL_COOKIE}=")]
    assert "; Secure" in header and "; HttpOnly" in header, header


def test_a_replayed_state_is_refused_without_a_second_exchange(client, services, hl):
    state = start_install(client)
    cookie = install_cookie(client)
    code = hl.oauth.authorize(location_id=LOC, company_id=COMPANY, redirect_uri=CALLBACK)
    first = client.get(f"/oauth/callback?code={code}&state={state}")
    assert first.status_code == 200, first.get_data(as_text=True)
    assert code_exchanges(hl) == 1
    assert client.get_cookie(INSTALL_COOKIE, path="/oauth") is None  # cleared after use
    # The same link again, even with the browser's cookie put back (a captured request),
    # and with a fresh code: HighLevel's token endpoint is never asked again.
    for replay_code in (code, hl.oauth.authorize(location_id="loc_other", company_id=COMPANY,
                                                 redirect_uri=CALLBACK)):
        client.set_cookie(INSTALL_COOKIE, cookie, path="/oauth")
        again = client.get(f"/oauth/callback?code={replay_code}&state={state}")
        assert again.status_code == 400
        assert again.headers["Content-Type"].startswith("text/html")
        assert "already been used" in again.get_data(as_text=True)
    assert code_exchanges(hl) == 1
    assert [s["locationId"] for s in services.vault.list()] == [LOC]


def test_a_state_used_once_stays_used_after_other_single_use_tokens_are_pruned(
        migrated_db_url, hl, clock):
    """The state shares used_webhook_tokens with Mailgun's tokens, whose pruning (kept
    2 x tolerance + 60 s) would forget a state before it expires on a small tolerance."""
    app = create_app(test_config(migrated_db_url, HIGHLEVEL_BASE_URL=hl.url,
                                 HIGHLEVEL_CLIENT_ID=hl.oauth.client_id,
                                 HIGHLEVEL_CLIENT_SECRET=hl.oauth.client_secret,
                                 PUBLIC_BASE_URL="https://relay.example",
                                 SOURCE_SIGNATURE_TOLERANCE_SECONDS=10))
    app.extensions["service"].clock = clock
    client = app.test_client()
    try:
        state = start_install(client)
        cookie = install_cookie(client)
        code = hl.oauth.authorize(location_id=LOC, company_id=COMPANY, redirect_uri=CALLBACK)
        assert client.get(f"/oauth/callback?code={code}&state={state}").status_code == 200
        clock.advance(300)  # the state is still valid for another 5 minutes
        # A Mailgun signature token claimed now prunes the table.
        assert app.extensions["service"].sources.tokens.claim("mailgun", "mg-token", now=clock())
        client.set_cookie(INSTALL_COOKIE, cookie, path="/oauth")
        replay = client.get(f"/oauth/callback?code={code}&state={state}")
        assert replay.status_code == 400, replay.get_data(as_text=True)
        assert code_exchanges(hl) == 1
    finally:
        app.extensions["service"].engine.dispose()


def test_callback_without_the_install_cookie_is_refused_before_any_exchange(
        app, client, services, hl):
    state = start_install(client)  # this browser started the install...
    code = hl.oauth.authorize(location_id=LOC, company_id=COMPANY, redirect_uri=CALLBACK)
    other = app.test_client()  # ...the link is opened in another one (login CSRF)
    resp = other.get(f"/oauth/callback?code={code}&state={state}")
    assert resp.status_code == 400
    assert resp.headers["Content-Type"].startswith("text/html")
    assert "Not installed" in resp.get_data(as_text=True)
    assert "browser" in resp.get_data(as_text=True)
    assert code_exchanges(hl) == 0
    assert services.vault.list() == []
    # Refusing it did not spend the state: the browser that started the install finishes.
    resp = client.get(f"/oauth/callback?code={code}&state={state}")
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert code_exchanges(hl) == 1


def test_callback_with_another_browsers_install_cookie_is_refused(app, client, services, hl):
    state = start_install(client)
    other = app.test_client()
    start_install(other)  # its own install, its own cookie
    assert install_cookie(other) != install_cookie(client)
    code = hl.oauth.authorize(location_id=LOC, company_id=COMPANY, redirect_uri=CALLBACK)
    resp = other.get(f"/oauth/callback?code={code}&state={state}")
    assert resp.status_code == 400
    assert "browser" in resp.get_data(as_text=True)
    assert other.get_cookie(INSTALL_COOKIE, path="/oauth") is None  # cleared on refusal too
    # A forged cookie is refused the same way.
    other.set_cookie(INSTALL_COOKIE, "forged", path="/oauth")
    assert other.get(f"/oauth/callback?code={code}&state={state}").status_code == 400
    assert code_exchanges(hl) == 0
    assert services.vault.list() == []


@pytest.mark.skipif(not PG_URL, reason="only PostgreSQL enforces a column's length: "
                    "set TEST_DATABASE_URL")
@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_grant_the_store_cannot_hold_logs_no_token_or_ciphertext(client, services, hl,
                                                                    caplog):
    """A location id longer than the column: the INSERT of the encrypted tokens fails with
    a DataError, whose text would quote its parameters."""
    state = start_install(client)
    code = hl.oauth.authorize(location_id="L" * 100, company_id=COMPANY,
                              redirect_uri=CALLBACK)
    caplog.set_level(logging.INFO)
    resp = client.get(f"/oauth/callback?code={code}&state={state}")
    assert resp.status_code == 500
    [record] = [r for r in caplog.records if r.getMessage() == "request.unhandled"]
    assert issubclass(record.exc_info[0], sa.exc.DataError)
    shown = caplog.text + resp.get_data(as_text=True)
    assert "value too long" in shown  # the error itself is still there to read
    assert "gAAAAA" not in shown  # the prefix of every Fernet ciphertext
    assert hl.tokens and not [token for token in hl.tokens if token[:16] in shown]
    assert services.vault.list() == []


@pytest.mark.skipif(not PG_URL, reason="only PostgreSQL enforces a column's length: "
                    "set TEST_DATABASE_URL")
@pytest.mark.parametrize("backend", ["postgresql"])
def test_an_agency_install_the_store_cannot_hold_whole_stores_none_of_it(client, services, hl):
    """One transaction: a location id too long for its column, after the agency's token and
    another location's install row were written, takes them back too."""
    state = start_install(client)
    code = hl.oauth.authorize(user_type="Company", company_id=COMPANY,
                              approved_locations=["loc_a", "L" * 100])
    assert client.get(f"/oauth/callback?code={code}&state={state}").status_code == 500
    assert services.vault.list() == []
    with services.engine.connect() as conn:
        assert conn.execute(sa.select(installs)).all() == []


def test_callback_survives_a_deeply_nested_answer_and_stores_nothing(client, services, hl):
    """HighLevel's answer is parsed safely: 5,000 levels of nesting were a RecursionError
    (a 500 with a traceback), as on the service's own routes (issue 13)."""
    state = start_install(client)
    hl.script((200, "[" * 5000 + "]" * 5000), path="/oauth/token")
    resp = client.get(f"/oauth/callback?code=any-code&state={state}")
    assert resp.status_code == 502
    assert "Nothing was stored" in resp.get_data(as_text=True)
    assert services.vault.list() == []


def test_install_without_app_credentials_is_503(migrated_db_url):
    app = create_app(test_config(migrated_db_url))
    assert app.test_client().get("/oauth/install").status_code == 503
    app.extensions["service"].engine.dispose()


def test_token_is_refreshed_ahead_of_expiry(services, hl, forwarder, clock):
    pair = hl.oauth.issue(location_id=LOC, expires_in=120)  # expires inside the margin
    store_pair(services, pair, now=clock())
    services.store.record_views([make_view(clock(), location_id=LOC)], now=clock())
    forwarder.forward_once(now=clock())
    assert hl.oauth.refresh_calls == 1
    [patch] = hl.patches()
    assert patch.token != pair["access_token"]
    assert services.vault.read(LOC).access_token() == patch.token
    assert not hl.oauth.refresh_token_valid(pair["refresh_token"])  # rotated


def test_401_refreshes_once_and_retries(services, hl, forwarder, clock):
    pair = hl.oauth.issue(location_id=LOC)
    store_pair(services, pair, now=clock())
    hl.tokens.discard(pair["access_token"])  # revoked early at HighLevel
    [event] = services.store.record_views([make_view(clock(), location_id=LOC)], now=clock())
    forwarder.forward_once(now=clock())
    assert hl.oauth.refresh_calls == 1
    assert [r.status for r in hl.requests if r.method == "PATCH"] == [401, 200]
    assert services.store.event_status(event.id)["status"] == "delivered"


def test_dead_refresh_token_marks_the_token_invalid_and_parks(services, hl, forwarder, clock):
    pair = hl.oauth.issue(location_id=LOC, expires_in=60)
    store_pair(services, pair, now=clock())
    hl.tokens.discard(pair["access_token"])
    # Spend the refresh token behind the relay's back (another app instance did it).
    import requests

    with requests.Session() as s:
        r = s.post(hl.url + "/oauth/token", data={
            "client_id": hl.oauth.client_id, "client_secret": hl.oauth.client_secret,
            "grant_type": "refresh_token", "refresh_token": pair["refresh_token"],
            "user_type": "Location"})
        assert r.status_code == 200
    clock.advance(61)
    [event] = services.store.record_views([make_view(clock(), location_id=LOC)], now=clock())
    forwarder.forward_once(now=clock())
    summary = services.vault.describe(LOC)
    assert summary["status"] == "invalid" and "invalid" in summary["lastError"].lower()
    assert services.store.event_status(event.id)["reason"] == "blocked"
    assert hl.patches() == []


def test_location_not_active_keeps_the_refresh_token_and_retries(services, hl, forwarder,
                                                                  clock):
    pair = hl.oauth.issue(location_id=LOC, expires_in=60)
    store_pair(services, pair, now=clock())
    hl.oauth.inactive_locations.add(LOC)
    clock.advance(61)  # the access token has expired
    [event] = services.store.record_views([make_view(clock(), location_id=LOC)], now=clock())
    forwarder.forward_once(now=clock())
    summary = services.vault.describe(LOC)
    assert summary["status"] == "inactive" and summary["retryAt"] > clock()
    assert hl.oauth.refresh_token_valid(pair["refresh_token"])  # kept
    assert services.store.event_status(event.id)["reason"] == "blocked"
    hl.oauth.inactive_locations.discard(LOC)  # reactivated in HighLevel
    clock.advance(3601)
    forwarder.forward_once(now=clock())  # the periodic retry revives it and sends
    forwarder.forward_once(now=clock())
    assert services.vault.describe(LOC)["status"] == "active"
    assert services.store.event_status(event.id)["status"] == "delivered"


def test_agency_token_mints_a_location_token(services, hl, forwarder, clock):
    company = hl.oauth.issue(user_type="Company", company_id=COMPANY)
    store_pair(services, company, now=clock(), location=COMPANY, kind="agency")
    with services.engine.begin() as conn:
        conn.execute(installs.insert().values(target_type="location", target_id="loc_m",
                                              company_id=COMPANY, status="installed",
                                              updated_at=clock()))
    [event] = services.store.record_views([make_view(clock(), location_id="loc_m")],
                                          now=clock())
    forwarder.forward_once(now=clock())
    assert hl.oauth.location_token_calls == 1
    assert services.vault.describe("loc_m")["tokenKind"] == "minted"
    [patch] = hl.patches()
    assert patch.token == services.vault.read("loc_m").access_token()
    assert services.store.event_status(event.id)["status"] == "delivered"


def test_four_forwarder_processes_refresh_exactly_once(migrated_db_url, hl, tmp_path):
    """Single-flight across processes: one refresh call, every process uses its result."""
    app = create_app(test_config(migrated_db_url))
    svc = app.extensions["service"]
    now = dt.datetime.now(dt.UTC)
    pair = hl.oauth.issue(location_id=LOC)
    hl.tokens.discard(pair["access_token"])  # expired at HighLevel...
    store_pair(svc, pair, now=now - dt.timedelta(days=1))  # ...and by the relay's clock
    svc.store.record_views([make_view(now, location_id=LOC, document_id=f"inv_{i}")
                            for i in range(8)], now=now)
    svc.engine.dispose()
    env = {**os.environ, "DATABASE_URL": migrated_db_url, "RELAY_ENV": "test",
           "INGEST_API_KEYS": INGEST_KEY, "ADMIN_API_KEYS": ADMIN_KEY,
           "PIXEL_SIGNING_KEYS": PIXEL_KEY, "TOKEN_ENCRYPTION_KEYS": FERNET_KEY,
           "SESSION_SECRET_KEYS": SESSION_KEY, "HIGHLEVEL_BASE_URL": hl.url,
           "HIGHLEVEL_CLIENT_ID": hl.oauth.client_id,
           "HIGHLEVEL_CLIENT_SECRET": hl.oauth.client_secret, "FORWARD_CONCURRENCY": "2",
           "LOG_FORMAT": "json"}
    flask = str(Path(sys.executable).parent / "flask")
    procs = [subprocess.Popen([flask, "--app", "service", "forwarder", "--once"], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for _ in range(4)]
    outputs = [p.communicate(timeout=120)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(outputs)
    assert hl.oauth.refresh_calls == 1, "\n".join(outputs)
    patches = hl.patches()
    assert sorted(p.document_id for p in patches) == [f"inv_{i}" for i in range(8)]
    assert len({p.token for p in patches}) == 1 and patches[0].token != pair["access_token"]
    assert all(pair["refresh_token"] not in out and pair["access_token"] not in out
               for out in outputs)


def test_parked_views_of_a_mintable_location_are_released(services, hl, forwarder, clock):
    """A location whose company installed the app is usable without a token of its own."""
    [event] = services.store.record_views([make_view(clock(), location_id="loc_m")],
                                          now=clock())
    forwarder.forward_once(now=clock())
    assert services.store.event_status(event.id)["reason"] == "blocked"
    company = hl.oauth.issue(user_type="Company", company_id=COMPANY)
    store_pair(services, company, now=clock(), location=COMPANY, kind="agency")
    with services.engine.begin() as conn:
        conn.execute(installs.insert().values(target_type="location", target_id="loc_m",
                                              company_id=COMPANY, status="installed",
                                              updated_at=clock()))
    clock.advance(6)  # the forwarder's unblock sweep runs every 5 s
    forwarder.forward_once(now=clock())
    assert services.store.event_status(event.id)["status"] == "delivered"
