"""The tracking pixel and beacon: always the GIF, a view only for a valid GET."""

from __future__ import annotations

import datetime as dt
import logging
import re

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.ingest.pixels import GIF, PixelSigner, PixelTarget
from service.store.db import events

from .conftest import PIXEL_KEY, T0, admin_headers

GIF_HEADERS = {
    "Content-Type": "image/gif",
    "Content-Length": "43",
    "Cache-Control": "no-cache, no-store, must-revalidate, private",
    "Pragma": "no-cache",
    "Expires": "0",
    "X-Robots-Tag": "noindex",
}
LOC, INV = "6578278e879ad2646715ba9c", "6578278e879ad2646715ba9d"
CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/126.0.0.0 Safari/537.36")


def token_for(kind="invoice", location=LOC, document=INV, *, keys=(PIXEL_KEY,), expires=None):
    return PixelSigner(list(keys)).sign(PixelTarget(kind, location, document, expires))


def view_count(services) -> int:
    with services.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(events)).scalar()


def assert_gif(resp):
    assert resp.status_code == 200
    for name, value in GIF_HEADERS.items():
        assert resp.headers[name] == value, name
    if resp.request.method == "GET":
        assert resp.data == GIF


def test_gif_is_the_43_byte_transparent_gif():
    assert len(GIF) == 43 and GIF.startswith(b"GIF89a") and GIF.endswith(b";")


def test_valid_get_records_one_view(client, services):
    resp = client.get(f"/v1/pixel/{token_for()}.gif", headers={"User-Agent": CHROME})
    assert_gif(resp)
    with services.engine.connect() as conn:
        row = conn.execute(sa.select(events)).one()
    assert (row.kind, row.location_id, row.document_id, row.source, row.verdict) == (
        "invoice", LOC, INV, "pixel", "human")
    assert row.user_agent == CHROME and row.ip == "127.0.0.0"  # RETAIN_CLIENT_IP=truncate
    assert services.store.queue_depth() == {"pending": 1}


def test_pixel_get_carries_the_request_id_in_and_out(client, services, caplog):
    resp = client.get(f"/v1/pixel/{token_for()}.gif", headers={"X-Request-ID": "req-42.a"})
    assert_gif(resp)
    assert resp.headers["X-Request-ID"] == "req-42.a"
    with services.engine.connect() as conn:
        assert conn.execute(sa.select(events.c.request_id)).scalar_one() == "req-42.a"
    # A malformed id is replaced by a fresh one, and a bad token's log line carries it.
    resp = client.get("/v1/pixel/forged.gif", headers={"X-Request-ID": "no spaces"})
    fresh = resp.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", fresh)
    [line] = [r for r in caplog.records if r.getMessage() == "pixel.invalid_token"]
    assert line.request_id == fresh


def test_pixel_get_is_answered_before_flask(app, client, services):
    """The GIF GET is served by pixel_front's middleware: no Flask hook runs for it."""
    seen = []
    app.before_request(lambda: seen.append(1))
    assert_gif(client.get(f"/v1/pixel/{token_for()}.gif"))
    assert seen == [] and view_count(services) == 1
    assert_gif(client.head(f"/v1/pixel/{token_for()}.gif"))  # HEAD goes through Flask
    assert seen == [1]


def test_client_ip_comes_through_trusted_proxies_only(migrated_db_url, clock):
    from service import create_app

    from .conftest import test_config

    forwarded = {"X-Forwarded-For": "203.0.113.7"}
    for proxies, expected in ((1, "203.0.113.7"), (0, "127.0.0.1")):
        app = create_app(test_config(migrated_db_url, TRUSTED_PROXIES=proxies,
                                     RETAIN_CLIENT_IP="full"))
        svc = app.extensions["service"]
        svc.clock = clock
        try:
            assert_gif(app.test_client().get(f"/v1/pixel/{token_for()}.gif",
                                             headers=forwarded))
            with svc.engine.connect() as conn:
                ips = conn.execute(sa.select(events.c.ip).order_by(events.c.received_at,
                                                                   events.c.id)).scalars()
                assert expected in list(ips)
        finally:
            svc.engine.dispose()


def test_estimate_pixel(client, services):
    assert_gif(client.get(f"/v1/pixel/{token_for('estimate')}.gif"))
    [claim] = services.store.claim_due(now=services.clock(), limit=5)
    assert (claim.kind, claim.document_id) == ("estimate", INV)


def forged():
    good = token_for()
    return good[:-3] + ("AAA" if not good.endswith("AAA") else "BBB")


@pytest.mark.parametrize("path", [
    "/v1/pixel/{forged}.gif",
    "/v1/pixel/{other_key}.gif",
    "/v1/pixel/{truncated}.gif",
    "/v1/pixel/{expired}.gif",
    "/v1/pixel/{valid}",  # no .gif
    "/v1/pixel/{valid}.png",
    "/v1/pixel/.gif",
    "/v1/pixel/x.gif",
    "/v1/pixel/a/b/c.gif",
    "/v1/pixel/%00%ff.gif",
    "/v1/pixel/" + "A" * 5000 + ".gif",
    "/v1/pixel/i.loc.doc.gif",  # right shape, no signature
])
def test_bad_tokens_still_get_the_gif_and_record_nothing(client, services, path):
    url = path.format(
        forged=forged(), valid=token_for(),
        other_key=token_for(keys=("some-other-key",)),
        truncated=token_for()[:40],
        expired=token_for(expires=T0 - dt.timedelta(seconds=1)),
    )
    assert_gif(client.get(url))
    assert view_count(services) == 0


@pytest.mark.parametrize("headers", [
    {"Purpose": "prefetch"},
    {"Sec-Purpose": "prefetch"},
    {"Sec-Purpose": "prefetch;prerender"},
    {"X-Purpose": "preview"},
    {"X-Moz": "prefetch"},
])
def test_prefetches_get_the_gif_and_record_nothing(client, services, headers):
    assert_gif(client.get(f"/v1/pixel/{token_for()}.gif", headers=headers))
    assert view_count(services) == 0


def test_head_gets_the_same_headers_and_records_nothing(client, services):
    resp = client.head(f"/v1/pixel/{token_for()}.gif")
    assert_gif(resp)
    assert resp.data == b""
    assert view_count(services) == 0


def test_store_down_still_answers_the_gif(down_app, caplog):
    logging.getLogger().addHandler(caplog.handler)  # create_app's dictConfig dropped it
    assert_gif(down_app.test_client().get(f"/v1/pixel/{token_for()}.gif"))
    [line] = [r for r in caplog.records if r.getMessage() == "pixel.record_failed"]
    # One line per view while the store is down, not a traceback each (log floods).
    assert line.levelname == "WARNING" and line.exc_info is None
    assert line.error == "OperationalError"  # the driver's error, named


def test_an_unexpected_error_still_answers_the_gif_and_logs_its_traceback(
        app, client, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise KeyError("bug")

    monkeypatch.setattr(app.extensions["service"].classifier, "classify", broken)
    assert_gif(client.get(f"/v1/pixel/{token_for()}.gif"))
    [line] = [r for r in caplog.records if r.getMessage() == "pixel.record_failed"]
    assert line.levelname == "ERROR" and line.exc_info is not None


def test_unexpired_token_counts(client, services):
    assert_gif(client.get(f"/v1/pixel/{token_for(expires=T0 + dt.timedelta(days=1))}.gif"))
    assert view_count(services) == 1


def test_key_rotation_old_emails_keep_working(app, client, services):
    old = token_for(keys=("old-key",))
    services.pixel_signer = PixelSigner(["new-key", "old-key"])  # rotated: new signs
    assert_gif(client.get(f"/v1/pixel/{old}.gif"))
    assert view_count(services) == 1
    minted = client.post("/v1/pixel-urls", json={"locationId": LOC, "invoiceId": INV},
                         headers=admin_headers()).json["token"]
    assert PixelSigner(["new-key"]).verify(minted, now=T0) is not None
    assert PixelSigner(["old-key"]).verify(minted, now=T0) is None
    services.pixel_signer = PixelSigner(["new-key"])  # old key retired
    assert_gif(client.get(f"/v1/pixel/{old}.gif"))
    assert view_count(services) == 1


def test_tokens_are_short_and_url_safe():
    token = token_for(expires=T0 + dt.timedelta(days=365))
    assert len(token_for()) < 120 and len(token) < 120
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", token)


@pytest.mark.parametrize("body, content_type", [
    (b"", None), (b"{}", "application/json"), (b"x=1", "application/x-www-form-urlencoded"),
    (b"\x00\x01binary", "application/octet-stream"), (b"hello", "text/plain;charset=UTF-8"),
])
def test_beacon_records_with_any_body(client, services, body, content_type):
    resp = client.post(f"/v1/beacon/{token_for()}", data=body, content_type=content_type)
    assert resp.status_code == 204 and resp.data == b""
    with services.engine.connect() as conn:
        assert conn.execute(sa.select(events.c.source)).scalar() == "beacon"


def test_beacon_with_a_bad_token_is_204_and_records_nothing(client, services):
    assert client.post(f"/v1/beacon/{forged()}", data=b"x").status_code == 204
    assert view_count(services) == 0


def test_mint_pixel_url_api(client, services):
    resp = client.post("/v1/pixel-urls", json={"locationId": LOC, "invoiceId": INV,
                                               "expiresIn": 3600}, headers=admin_headers())
    assert resp.status_code == 200
    body = resp.json
    assert body["url"].startswith("http://localhost:8000/v1/pixel/") and body["url"].endswith(
        ".gif")
    assert f'src="{body["url"]}"' in body["html"]
    for attr in ('width="1"', 'height="1"', 'alt=""', "style="):
        assert attr in body["html"]
    assert dt.datetime.fromisoformat(body["expiresAt"]) == T0 + dt.timedelta(hours=1)
    # The minted URL works.
    assert_gif(client.get(body["url"].removeprefix("http://localhost:8000")))
    assert view_count(services) == 1


def test_minted_urls_follow_the_configured_port_outside_production(migrated_db_url, clock):
    """With PUBLIC_BASE_URL unset, a relay on another PORT mints URLs to that port."""
    from service import create_app

    from .conftest import test_config

    app = create_app(test_config(migrated_db_url, RELAY_ENV="development", PORT=8123))
    app.extensions["service"].clock = clock
    try:
        resp = app.test_client().post("/v1/pixel-urls", json={"locationId": LOC,
                                                               "invoiceId": INV},
                                      headers=admin_headers())
        assert resp.status_code == 200, resp.json
        assert resp.json["url"].startswith("http://localhost:8123/v1/pixel/")
        assert resp.json["beaconUrl"].startswith("http://localhost:8123/v1/beacon/")
    finally:
        app.extensions["service"].engine.dispose()


@pytest.mark.parametrize(("body", "field"), [
    ({"locationId": LOC}, "invoiceId"),
    ({"locationId": LOC, "invoiceId": INV, "estimateId": INV}, "_schema"),
    ({"locationId": "bad id", "invoiceId": INV}, "locationId"),
    ({"locationId": LOC, "invoiceId": INV, "expiresIn": 0}, "expiresIn"),
])
def test_mint_rejects_bad_input(client, body, field):
    resp = client.post("/v1/pixel-urls", json=body, headers=admin_headers())
    assert resp.status_code == 422 and field in resp.json["errors"]


def test_mint_needs_the_admin_key(client):
    resp = client.post("/v1/pixel-urls", json={"locationId": LOC, "invoiceId": INV})
    assert resp.status_code == 401


def test_cli_pixel_url(runner, client, services):
    result = runner.invoke(args=["pixel-url", LOC, INV, "--estimate", "--expires-in", "600"])
    assert result.exit_code == 0, result.output
    url, html = result.output.strip().splitlines()
    assert url in html and html.startswith("<img ")
    assert_gif(client.get(url.removeprefix("http://localhost:8000")))
    [claim] = services.store.claim_due(now=services.clock(), limit=5)
    assert claim.kind == "estimate"
    bad = runner.invoke(args=["pixel-url", "bad id", INV])
    assert bad.exit_code != 0


def test_verdict_counts_are_visible_per_location(client, services):
    services.vault.set_token(LOC, access_token="pit-token-000000", now=T0)
    client.get(f"/v1/pixel/{token_for()}.gif", headers={"User-Agent": CHROME})
    client.get(f"/v1/pixel/{token_for()}.gif", headers={"User-Agent": CHROME})
    stats = client.get(f"/v1/locations/{LOC}", headers=admin_headers()).json
    assert stats["verdicts"]["human"] == 2


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rest=st.text(min_size=0, max_size=300), method=st.sampled_from(["GET", "HEAD"]))
def test_fuzz_any_path_under_pixel_is_the_gif(client, rest, method):
    from urllib.parse import quote

    resp = client.open("/v1/pixel/" + quote(rest, safe="/.~-_"), method=method)
    assert_gif(resp)  # empty segments, slashes, newlines, NULs: always the GIF
