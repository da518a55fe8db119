"""The console's door: sign-in with an admin key, the session cookie, CSRF, sign-out, `/`."""

from __future__ import annotations

import base64
import json
import logging
import zlib

import pytest

from service import create_app

from .conftest import ADMIN_KEY, SESSION_KEY, test_config
from .console import csrf_token, post_form, sign_in, text

OTHER_ADMIN_KEY = "ak_other_" + "o" * 24


def cookie_payload(client) -> dict:
    """The session cookie's contents (signed, not encrypted: anyone holding it can read it)."""
    cookie = client.get_cookie("relay_console", path="/console")
    assert cookie is not None
    data = cookie.value
    compressed = data.startswith(".")
    payload = data.lstrip(".").split(".")[0]
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    return json.loads(zlib.decompress(raw) if compressed else raw)


def carry_session(source, target) -> None:
    """Give ``target`` the session cookie ``source`` holds (one browser, another app)."""
    cookie = source.get_cookie("relay_console", path="/console")
    target.set_cookie("relay_console", cookie.value, path="/console")


def test_the_root_links_the_console_docs_and_health(client):
    resp = client.get("/")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    for href in ('href="/console/overview"', 'href="/docs"', 'href="/healthz"'):
        assert href in resp.text
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]


@pytest.mark.parametrize("path", ["/console/overview", "/console/locations",
                                  "/console/events?id=x", "/console/deliveries"])
def test_a_signed_out_page_request_is_sent_to_sign_in_and_back(client, path):
    resp = client.get(path)
    assert resp.status_code == 302
    assert resp.location.startswith("/console/signin?next=")
    form = client.get(resp.location)
    assert f'name="next" value="{path}"'.replace("&", "&amp;") in form.text


def test_signing_in_opens_a_session_that_holds_no_key(client):
    resp = sign_in(client, next_path="/console/events")
    assert resp.status_code == 302 and resp.location == "/console/events"
    cookie = resp.headers["Set-Cookie"]
    for attribute in ("HttpOnly", "SameSite=Strict", "Secure", "Path=/console", "Expires="):
        assert attribute in cookie
    assert ADMIN_KEY not in json.dumps(cookie_payload(client))
    page = client.get("/console/events")
    assert page.status_code == 200 and "Find an event" in page.text
    assert ADMIN_KEY not in page.text
    assert page.headers["Cache-Control"] == "no-store"
    assert page.headers["X-Frame-Options"] == "DENY"


def test_development_cookies_are_not_secure_so_plain_http_localhost_works(migrated_db_url):
    app = create_app(test_config(migrated_db_url, RELAY_ENV="development"))
    try:
        resp = sign_in(app.test_client())
    finally:
        app.extensions["service"].engine.dispose()
    assert resp.status_code == 302
    assert "Secure" not in resp.headers["Set-Cookie"]
    assert "HttpOnly" in resp.headers["Set-Cookie"]


@pytest.mark.parametrize("next_path", ["https://evil.example/console/x", "//evil.example/x",
                                       "/v1/locations", "/console\\..\\x", "javascript:x"])
def test_sign_in_never_sends_the_browser_elsewhere(client, next_path):
    resp = sign_in(client, next_path=next_path)
    assert resp.status_code == 302 and resp.location == "/console/overview"


def test_a_wrong_key_is_refused_logged_without_it_and_not_shown_back(client, caplog):
    caplog.set_level(logging.INFO)
    wrong = "ak_wrong_" + "w" * 24
    resp = sign_in(client, key=wrong)
    assert resp.status_code == 401
    assert "not an admin key" in resp.text
    assert wrong not in resp.text
    assert [r.getMessage() for r in caplog.records].count("console.signin_failed") == 1
    assert wrong not in caplog.text and ADMIN_KEY not in caplog.text
    assert client.get("/console/events").status_code == 302  # still signed out


def test_an_ingest_key_does_not_open_the_console(client):
    from .conftest import INGEST_KEY

    assert sign_in(client, key=INGEST_KEY).status_code == 401


def test_failed_sign_ins_are_throttled_per_address(client, clock):
    for _ in range(10):
        assert sign_in(client, key="nope").status_code == 401
    resp = sign_in(client)  # even the right key waits: the address is throttled
    assert resp.status_code == 429
    assert int(resp.headers["Retry-After"]) > 0
    assert "Too many failed sign-ins" in resp.text
    clock.advance(301)
    assert sign_in(client).status_code == 302


def test_the_key_is_only_accepted_from_a_posted_form(client):
    """A key in the query string of a GET does nothing (it would be in every access log)."""
    resp = client.get(f"/console/signin?key={ADMIN_KEY}")
    assert resp.status_code == 200
    assert client.get("/console/events").status_code == 302


def test_signing_out_ends_the_session(client):
    sign_in(client)
    resp = post_form(client, "/console/events", "/console/signout")
    assert resp.status_code == 302 and resp.location == "/console/signin"
    assert "You are signed out." in client.get(resp.location).text
    assert client.get("/console/events").status_code == 302


def test_a_signed_out_form_is_refused_and_changes_nothing(client, vault):
    page = client.get("/console/signin")
    resp = client.post("/console/locations/loc_1/token", data={
        "csrf_token": csrf_token(page.text), "accessToken": "pit-" + "x" * 20})
    assert resp.status_code == 401
    assert "not signed in" in text(resp.text)
    assert vault.describe("loc_1") is None


@pytest.mark.parametrize("token", ["forged", "", None])
def test_a_forged_or_missing_csrf_token_is_refused_and_changes_nothing(client, vault, token):
    sign_in(client)
    data = {"accessToken": "pit-" + "x" * 20}
    if token is not None:
        data["csrf_token"] = token
    resp = client.post("/console/locations/loc_1/token", data=data)
    assert resp.status_code == 400
    assert "Nothing was changed" in text(resp.text)
    assert vault.describe("loc_1") is None


def test_a_csrf_token_from_another_session_is_refused(app, client, vault):
    other = app.test_client()
    sign_in(other)
    theirs = csrf_token(other.get("/console/events").text)
    sign_in(client)
    resp = client.post("/console/locations/loc_1/token",
                       data={"csrf_token": theirs, "accessToken": "pit-" + "x" * 20})
    assert resp.status_code == 400
    assert vault.describe("loc_1") is None


def test_the_api_takes_no_csrf_token(client):
    """CSRF is the console's: bearer-key API calls are not forms a browser sends on its own."""
    from .conftest import admin_headers

    resp = client.put("/v1/locations/loc_1/token", json={"accessToken": "pit-" + "x" * 20},
                      headers=admin_headers())
    assert resp.status_code == 200
    assert "Set-Cookie" not in resp.headers


def test_removing_an_admin_key_ends_the_sessions_it_opened(migrated_db_url):
    both = create_app(test_config(migrated_db_url, ADMIN_API_KEYS=[ADMIN_KEY, OTHER_ADMIN_KEY]))
    client = both.test_client()
    sign_in(client, key=OTHER_ADMIN_KEY)
    assert client.get("/console/events").status_code == 200
    revoked = create_app(test_config(migrated_db_url, ADMIN_API_KEYS=[ADMIN_KEY]))
    try:
        with revoked.test_client() as after:
            carry_session(client, after)  # the same browser, after the restart
            assert after.get("/console/events").status_code == 302
    finally:
        for app in (both, revoked):
            app.extensions["service"].engine.dispose()


def test_a_session_survives_a_session_key_rotation(migrated_db_url):
    old = create_app(test_config(migrated_db_url))
    client = old.test_client()
    sign_in(client)
    rotated = create_app(test_config(migrated_db_url,
                                     SESSION_SECRET_KEYS=["new-" + "n" * 30, SESSION_KEY]))
    gone = create_app(test_config(migrated_db_url, SESSION_SECRET_KEYS=["new-" + "n" * 30]))
    try:
        for app, status in ((rotated, 200), (gone, 302)):
            with app.test_client() as after:
                carry_session(client, after)
                assert after.get("/console/events").status_code == status
    finally:
        for app in (old, rotated, gone):
            app.extensions["service"].engine.dispose()


def test_an_unknown_console_url_is_an_html_404_and_the_apis_stay_json(client):
    sign_in(client)
    page = client.get("/console/no-such-page")
    assert page.status_code == 404 and page.mimetype == "text/html"
    assert "Not Found" in page.text
    api = client.get("/v1/no-such-route")
    assert api.status_code == 404 and api.json["statusCode"] == 404


def test_a_store_outage_is_a_503_page_that_says_to_retry(down_app):
    client = down_app.test_client()
    assert sign_in(client).status_code == 302  # signing in needs no store
    resp = client.get("/console/deliveries")
    assert resp.status_code == 503 and resp.mimetype == "text/html"
    assert resp.headers["Retry-After"] == "5"
    assert "cannot reach its store" in resp.text


def test_an_unexpected_error_is_a_500_page_and_one_log_line(app, client, monkeypatch, caplog):
    sign_in(client)

    def broken(event_id):
        raise RuntimeError("boom")

    monkeypatch.setattr(app.extensions["service"].store, "event_status", broken)
    resp = client.get("/console/events?id=evt")
    assert resp.status_code == 500 and resp.mimetype == "text/html"
    assert "could not show this page" in resp.text and "boom" not in resp.text
    assert [r.getMessage() for r in caplog.records].count("request.unhandled") == 1


def test_the_throttle_forgets_old_failures_and_the_oldest_addresses():
    import datetime as dt

    from service.web.console.session import SigninThrottle

    t0 = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
    throttle = SigninThrottle(limit=2, window=dt.timedelta(minutes=5), max_addresses=2)
    for address in ("10.0.0.1", "10.0.0.1", "10.0.0.2"):
        throttle.failed(address, now=t0)
    assert throttle.retry_after("10.0.0.1", now=t0) == 301
    assert throttle.retry_after("10.0.0.1", now=t0 + dt.timedelta(seconds=299)) == 2
    assert throttle.retry_after("10.0.0.1", now=t0 + dt.timedelta(minutes=5)) == 0
    for address in ("10.0.0.3", "10.0.0.3", "10.0.0.1", "10.0.0.1"):
        throttle.failed(address, now=t0)  # three addresses: the oldest one is forgotten
    assert throttle.retry_after("10.0.0.3", now=t0) > 0
    assert throttle.retry_after("10.0.0.1", now=t0) > 0
    assert throttle.retry_after("10.0.0.2", now=t0) == 0
