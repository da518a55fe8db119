"""The portal script's HTTP face and the beacon's CORS, through the test client.

``GET /v1/relay.js``: its type, caching by version, ETag and 304; the ``script`` tag that
``POST /v1/pixel-urls`` mints; the beacon's preflight and POST for ``BEACON_ALLOWED_ORIGINS``
(any origin, or a list), with nothing recorded for a preflight or a refused origin. The
browser's side is tests/test_relay_js.py.
"""

from __future__ import annotations

import html
import re

import pytest

from service import create_app
from service.config import ConfigError, load_config
from service.web.relay_script import SCRIPT, VERSION

from .conftest import admin_headers, test_config
from .test_config import SECRETS
from .test_pixel import LOC, token_for, view_count

PORTAL = "https://portal.example.com"
ELSEWHERE = "https://elsewhere.example"
PREFLIGHT = {"Origin": PORTAL, "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "content-type"}


def cors_headers(resp) -> dict:
    return {k: v for k, v in resp.headers.items() if k.startswith("Access-Control-")}


# -- GET /v1/relay.js ------------------------------------------------------------------------


def test_the_script_unversioned_is_cached_briefly(client):
    resp = client.get("/v1/relay.js")
    assert resp.status_code == 200 and resp.data == SCRIPT
    assert resp.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Cache-Control"] == "public, max-age=300"
    assert resp.headers["ETag"] == f'"{VERSION}"'
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert resp.headers["Cross-Origin-Resource-Policy"] == "cross-origin"
    assert "Set-Cookie" not in resp.headers
    assert len(SCRIPT) < 2048  # small: no dependencies, nothing bundled


@pytest.mark.parametrize(("query", "cache_control"), [
    (f"?v={VERSION}", "public, max-age=31536000, immutable"),
    ("?v=0123456789abcdef", "public, max-age=300"),  # a version from before an upgrade
    ("?v=", "public, max-age=300"),
])
def test_only_the_current_version_is_cached_for_a_year(client, query, cache_control):
    resp = client.get(f"/v1/relay.js{query}")
    assert resp.status_code == 200 and resp.data == SCRIPT
    assert resp.headers["Cache-Control"] == cache_control


def test_the_version_is_a_hash_of_the_content():
    import hashlib

    assert re.fullmatch(r"[0-9a-f]{16}", VERSION)
    assert hashlib.sha256(SCRIPT).hexdigest().startswith(VERSION)


@pytest.mark.parametrize("if_none_match", [f'"{VERSION}"', f'W/"{VERSION}"', f'"x", "{VERSION}"',
                                           "*"])
def test_a_revalidation_is_304_with_the_same_caching(client, if_none_match):
    resp = client.get(f"/v1/relay.js?v={VERSION}", headers={"If-None-Match": if_none_match})
    assert resp.status_code == 304 and resp.data == b""
    assert resp.headers["ETag"] == f'"{VERSION}"'
    assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"


def test_another_etag_gets_the_script(client):
    resp = client.get("/v1/relay.js", headers={"If-None-Match": '"0123456789abcdef"'})
    assert resp.status_code == 200 and resp.data == SCRIPT


def test_head_answers_the_headers_alone(client):
    resp = client.head(f"/v1/relay.js?v={VERSION}")
    assert resp.status_code == 200 and resp.data == b""
    assert resp.headers["Content-Length"] == str(len(SCRIPT))


@pytest.mark.parametrize(("query", "named"), [("?version=1", "version"), ("?v=" + "a" * 65, "v")])
def test_a_bad_query_is_a_422_naming_it(client, query, named):
    resp = client.get(f"/v1/relay.js{query}")
    assert resp.status_code == 422
    body = resp.get_json()
    assert body["statusCode"] == 422 and named in str(body["errors"])


# -- POST /v1/pixel-urls: the script tag ----------------------------------------------------


def test_minting_answers_a_ready_script_tag(client):
    resp = client.post("/v1/pixel-urls", headers=admin_headers(),
                       json={"locationId": LOC, "invoiceId": "inv_portal"})
    assert resp.status_code == 200, resp.get_json()
    minted = resp.get_json()
    src = f"http://localhost:8000/v1/relay.js?v={VERSION}"
    assert minted["script"] == (f'<script src="{src}" '
                                f'data-beacon="{html.escape(minted["beaconUrl"])}" '
                                'async></script>')
    assert minted["beaconUrl"].startswith("http://localhost:8000/v1/beacon/")
    assert client.get(src.removeprefix("http://localhost:8000")).headers["Cache-Control"] \
        .endswith("immutable")


def test_the_script_field_is_documented(client):
    spec = client.get("/openapi.json").get_json()
    assert "script" in spec["components"]["schemas"]["PixelUrl"]["properties"]
    assert "text/javascript" in spec["paths"]["/v1/relay.js"]["get"]["responses"]["200"][
        "content"]


# -- the beacon's CORS: any origin (the default) ---------------------------------------------


def test_any_origin_by_default_preflight_records_nothing(client, services):
    resp = client.options(f"/v1/beacon/{token_for()}", headers=PREFLIGHT)
    assert resp.status_code == 204 and resp.data == b""
    assert cors_headers(resp) == {
        "Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "POST",
        "Access-Control-Allow-Headers": "Content-Type", "Access-Control-Max-Age": "86400"}
    assert "Vary" not in resp.headers
    assert view_count(services) == 0  # a preflight is not a view


def test_any_origin_by_default_post_records_and_is_readable(client, services):
    resp = client.post(f"/v1/beacon/{token_for()}", headers={"Origin": ELSEWHERE})
    assert resp.status_code == 204
    assert cors_headers(resp) == {"Access-Control-Allow-Origin": "*"}
    assert view_count(services) == 1


def test_the_pixel_front_door_hands_the_beacon_to_flask(app, client, services):
    seen = []
    app.before_request(lambda: seen.append(1))
    assert client.options(f"/v1/beacon/{token_for()}", headers=PREFLIGHT).status_code == 204
    assert client.post(f"/v1/beacon/{token_for()}", headers={"Origin": PORTAL}).status_code \
        == 204
    assert seen == [1, 1] and view_count(services) == 1


# -- the beacon's CORS: a list of origins ----------------------------------------------------


@pytest.fixture
def listed(migrated_db_url, clock, tmp_path):
    """A client of an app whose BEACON_ALLOWED_ORIGINS lists the portal (as configured:
    upper case, default port, trailing slash)."""
    origins = load_config({**SECRETS, "BEACON_ALLOWED_ORIGINS":
                           "https://Portal.Example.com:443/, http://localhost:3000"},
                          instance_path=tmp_path)["BEACON_ALLOWED_ORIGINS"]
    app = create_app(test_config(migrated_db_url, BEACON_ALLOWED_ORIGINS=origins))
    app.extensions["service"].clock = clock
    yield app.test_client(), app.extensions["service"]
    app.extensions["service"].engine.dispose()


def test_a_listed_origin_gets_the_preflight_and_the_answer(listed):
    client, services = listed
    resp = client.options(f"/v1/beacon/{token_for()}", headers=PREFLIGHT)
    assert resp.status_code == 204
    assert cors_headers(resp) == {
        "Access-Control-Allow-Origin": PORTAL, "Access-Control-Allow-Methods": "POST",
        "Access-Control-Allow-Headers": "Content-Type", "Access-Control-Max-Age": "86400"}
    assert resp.headers["Vary"] == "Origin"
    assert view_count(services) == 0
    resp = client.post(f"/v1/beacon/{token_for()}", headers={"Origin": PORTAL})
    assert resp.status_code == 204 and resp.headers["Vary"] == "Origin"
    assert cors_headers(resp) == {"Access-Control-Allow-Origin": PORTAL}
    assert view_count(services) == 1


@pytest.mark.parametrize("origin", [ELSEWHERE, "http://portal.example.com",
                                    "https://portal.example.com:8443", "http://localhost:3001"])
def test_another_origin_gets_no_cors_and_records_nothing(listed, caplog, origin):
    client, services = listed
    token = token_for()
    resp = client.options(f"/v1/beacon/{token}", headers={**PREFLIGHT, "Origin": origin})
    assert resp.status_code == 204 and cors_headers(resp) == {}
    assert resp.headers["Vary"] == "Origin"
    resp = client.post(f"/v1/beacon/{token}", headers={"Origin": origin})
    assert resp.status_code == 204 and cors_headers(resp) == {}
    assert view_count(services) == 0  # sendBeacon would have sent it without asking
    [line] = [r for r in caplog.records if r.getMessage() == "beacon.origin_refused"]
    assert line.origin == origin
    assert token not in caplog.text and token[:20] not in caplog.text


@pytest.mark.parametrize("headers", [{}, {"Origin": "null"}])
def test_no_origin_or_a_hidden_one_still_records(listed, headers):
    """curl and servers send no Origin; a page whose referrer policy hides its origin sends
    ``null`` with sendBeacon. Neither is another site's page: recorded, no CORS answer."""
    client, services = listed
    resp = client.post(f"/v1/beacon/{token_for()}", headers=headers)
    assert resp.status_code == 204 and cors_headers(resp) == {}
    assert view_count(services) == 1


# -- the setting ------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [
    ("*", ["*"]),
    (" https://A.example.com/ ,http://localhost:3000,https://a.example.com:443",
     ["https://a.example.com", "http://localhost:3000"]),
    ("http://[::1]:8080", ["http://[::1]:8080"]),
])
def test_allowed_origins_are_normalised_as_browsers_send_them(tmp_path, raw, expected):
    cfg = load_config({**SECRETS, "BEACON_ALLOWED_ORIGINS": raw}, instance_path=tmp_path)
    assert cfg["BEACON_ALLOWED_ORIGINS"] == expected


def test_any_origin_is_the_default(tmp_path):
    assert load_config(SECRETS, instance_path=tmp_path)["BEACON_ALLOWED_ORIGINS"] == ["*"]


@pytest.mark.parametrize("raw", ["*, https://a.example", "portal.example.com", "ftp://a.example",
                                 "https://a.example/portal", "https://user@a.example",
                                 "https://a.example?x=1", "https://a.example:99999", ","])
def test_a_bad_origin_is_refused_naming_the_setting(tmp_path, raw):
    with pytest.raises(ConfigError, match="^BEACON_ALLOWED_ORIGINS: must be \\* or "):
        load_config({**SECRETS, "BEACON_ALLOWED_ORIGINS": raw}, instance_path=tmp_path)
