"""The HTTP interface: ingest, event status, errors, request ids, OpenAPI."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import sqlalchemy as sa

from service.store.db import events

from .conftest import admin_headers, ingest_headers, make_event


def stored_events(services) -> int:
    with services.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(events)).scalar()


def test_single_event_is_accepted_and_queued(client, services):
    resp = client.post("/v1/events", json=make_event(), headers=ingest_headers())
    assert resp.status_code == 202
    assert resp.json["status"] == "queued"
    status = client.get(f"/v1/events/{resp.json['id']}", headers=ingest_headers()).json
    assert (status["status"], status["kind"], status["locationId"], status["documentId"]) == (
        "queued", "invoice", "loc_1", "inv_1")
    assert services.store.queue_depth() == {"pending": 1}


def test_estimate_event(client):
    resp = client.post("/v1/events", json=make_event(invoiceId=None, estimateId="est_9"),
                       headers=ingest_headers())
    status = client.get(f"/v1/events/{resp.json['id']}", headers=ingest_headers()).json
    assert (status["kind"], status["documentId"]) == ("estimate", "est_9")


def test_batch_is_accepted_in_order(client, services):
    batch = {"events": [make_event(invoiceId=f"inv_{i}") for i in range(500)]}
    resp = client.post("/v1/events", json=batch, headers=ingest_headers())
    assert resp.status_code == 202
    assert len(resp.json["events"]) == 500
    assert {e["status"] for e in resp.json["events"]} == {"queued"}
    assert services.store.queue_depth() == {"pending": 500}


def test_repeated_event_id_answers_duplicate_and_is_not_sent_twice(client, services):
    first = client.post("/v1/events", json=make_event(eventId="evt_1"), headers=ingest_headers())
    again = client.post("/v1/events", json=make_event(eventId="evt_1"), headers=ingest_headers())
    assert again.status_code == 202
    assert again.json == {"id": first.json["id"], "status": "duplicate"}
    assert stored_events(services) == 1
    assert len(services.store.claim_due(now=services.clock(), limit=10)) == 1


def test_viewed_at_is_kept(client, clock):
    viewed = "2026-01-05T11:58:00+00:00"
    resp = client.post("/v1/events", json=make_event(viewedAt=viewed), headers=ingest_headers())
    status = client.get(f"/v1/events/{resp.json['id']}", headers=ingest_headers()).json
    assert status["viewedAt"] == viewed


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer wrong"},
    {"Authorization": "Basic abc"},
    {"Authorization": "Bearer"},
])
def test_ingest_needs_a_key(client, services, headers):
    resp = client.post("/v1/events", json=make_event(), headers=headers)
    assert resp.status_code == 401
    assert resp.json == {"statusCode": 401, "message": "Missing or invalid API key"}
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert stored_events(services) == 0


def test_event_status_needs_a_key_and_an_existing_id(client):
    assert client.get("/v1/events/whatever").status_code == 401
    resp = client.get("/v1/events/whatever", headers=ingest_headers())
    assert resp.status_code == 404
    assert resp.json["message"] == "No event with that id"
    assert client.get("/v1/events/" + "x" * 300, headers=ingest_headers()).status_code == 404


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", None])
def test_non_json_body_is_415(client, services, content_type):
    resp = client.post("/v1/events", data=json.dumps(make_event()), content_type=content_type,
                       headers=ingest_headers())
    assert resp.status_code == 415
    assert resp.json["statusCode"] == 415
    assert stored_events(services) == 0


@pytest.mark.parametrize("body", [b"{", b"\xff\xfe", b'{"locationId": "a",}', b"nul"])
def test_malformed_json_is_400(client, services, body):
    resp = client.post("/v1/events", data=body, content_type="application/json",
                       headers=ingest_headers())
    assert resp.status_code == 400
    assert resp.json == {"statusCode": 400, "message": "The body is not valid JSON"}
    assert stored_events(services) == 0


def test_oversized_body_is_413(app, client, services):
    app.config["MAX_CONTENT_LENGTH"] = 10_000
    body = {"events": [make_event(invoiceId=f"inv_{i}", source="s" * 60) for i in range(200)]}
    resp = client.post("/v1/events", json=body, headers=ingest_headers())
    assert resp.status_code == 413
    assert resp.json["statusCode"] == 413
    assert stored_events(services) == 0


FUTURE = (dt.datetime(2026, 1, 5, tzinfo=dt.UTC) + dt.timedelta(days=3650)).isoformat()


@pytest.mark.parametrize(("event", "field"), [
    (make_event(locationId=None), "locationId"),
    (make_event(locationId=""), "locationId"),
    (make_event(locationId="has space"), "locationId"),
    (make_event(locationId="x" * 65), "locationId"),
    (make_event(locationId=12), "locationId"),
    (make_event(invoiceId=None), "invoiceId"),
    (make_event(estimateId="est_1"), "_schema"),
    (make_event(invoiceId="inv/1"), "invoiceId"),
    (make_event(viewedAt="yesterday"), "viewedAt"),
    (make_event(viewedAt=FUTURE), "viewedAt"),
    (make_event(eventId="e" * 65), "eventId"),
    (make_event(ip="999.1.1.1"), "ip"),
    (make_event(userAgent="u" * 513), "userAgent"),
    (make_event(extra="field"), "extra"),
    (make_event(locationId=None, invoiceId=None), "locationId"),
])
def test_invalid_event_is_422_with_the_field(client, services, event, field):
    resp = client.post("/v1/events", json=event, headers=ingest_headers())
    assert resp.status_code == 422, resp.json
    assert resp.json["statusCode"] == 422
    assert resp.json["message"] == "The request body is not valid"
    assert field in resp.json["errors"], resp.json
    assert stored_events(services) == 0


def test_a_bad_event_in_a_batch_rejects_the_whole_batch_with_its_index(client, services):
    batch = {"events": [make_event(invoiceId="ok_1"), make_event(invoiceId="bad id"),
                        make_event(invoiceId="ok_2"), make_event(locationId=None)]}
    resp = client.post("/v1/events", json=batch, headers=ingest_headers())
    assert resp.status_code == 422
    errors = resp.json["errors"]["events"]
    assert set(errors) == {"1", "3"}
    assert "invoiceId" in errors["1"] and "locationId" in errors["3"]
    assert stored_events(services) == 0


@pytest.mark.parametrize("body", [{"events": []}, {"events": [make_event()] * 501},
                                  {"events": "x"}, {"events": None}, [make_event()], "text", 5,
                                  {"events": [make_event()], "extra": 1}])
def test_bad_batch_shapes_are_422(client, services, body):
    resp = client.post("/v1/events", json=body, headers=ingest_headers())
    assert resp.status_code == 422, resp.json
    assert resp.json["errors"]
    assert stored_events(services) == 0


def test_store_down_is_503_with_retry_after(down_app):
    resp = down_app.test_client().post("/v1/events", json=make_event(),
                                       headers=ingest_headers())
    assert resp.status_code == 503
    assert resp.headers["Retry-After"] == "5"
    assert resp.json["statusCode"] == 503


def test_unknown_route_and_method_are_json(client):
    resp = client.get("/nope")
    assert resp.status_code == 404 and resp.json["statusCode"] == 404
    resp = client.put("/v1/events", json={}, headers=ingest_headers())
    assert resp.status_code == 405 and resp.json["statusCode"] == 405
    assert "POST" in resp.headers["Allow"]


def test_request_id_is_echoed_or_generated(client):
    resp = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert resp.headers["X-Request-ID"] == "abc-123"
    generated = client.get("/healthz").headers["X-Request-ID"]
    assert len(generated) == 32
    # A hostile id (log injection) is replaced, not echoed.
    assert client.get("/healthz", headers={"X-Request-ID": "a\tb"}).headers[
        "X-Request-ID"] != "a\tb"


def test_request_id_reaches_the_stored_view(client, services):
    client.post("/v1/events", json=make_event(), headers=ingest_headers(**{"X-Request-ID": "r-9"}))
    [claim] = services.store.claim_due(now=services.clock(), limit=1)
    assert claim.request_id == "r-9"


def test_health_and_readiness(client):
    assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json["status"] == "ready"


def test_readiness_fails_before_migration(db_url, tmp_path):
    from service import create_app

    from .conftest import test_config

    app = create_app(test_config(db_url))
    resp = app.test_client().get("/readyz")
    assert resp.status_code == 503
    assert "not migrated" in resp.json["message"]
    app.extensions["service"].engine.dispose()


def test_readiness_means_the_schema_is_at_least_this_codes(client, services):
    """A rolling deploy migrates first: old processes then meet a revision they do not
    know (a newer release's) and stay ready; a store behind this code is not ready."""
    from alembic.script import ScriptDirectory

    from service.store.engine import alembic_config, head_revision

    def stamp(revision):
        with services.engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = :r"),
                         {"r": revision})

    stamp("ffff_from_a_newer_release")
    newer = client.get("/readyz")
    assert newer.status_code == 200, newer.json
    assert newer.json == {"status": "ready", "revision": "ffff_from_a_newer_release"}

    older = ScriptDirectory.from_config(alembic_config(None)).get_revision(
        head_revision()).down_revision  # a known ancestor of head
    stamp(older)
    behind = client.get("/readyz")
    assert behind.status_code == 503
    assert behind.json["message"] == f"store not migrated (at {older}, need {head_revision()})"

    with services.engine.begin() as conn:  # tables, but no revision recorded
        conn.execute(sa.text("DELETE FROM alembic_version"))
    unstamped = client.get("/readyz")
    assert unstamped.status_code == 503
    assert unstamped.json["message"] == f"store not migrated (no revision, need {head_revision()})"

    with services.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO alembic_version VALUES (:r)"), {"r": head_revision()})
    assert client.get("/readyz").json == {"status": "ready", "revision": head_revision()}


def test_readiness_fails_when_the_store_is_unreachable(down_app):
    resp = down_app.test_client().get("/readyz")
    assert resp.status_code == 503
    assert resp.json["message"].startswith("store unreachable")
    assert "nobody" not in resp.json["message"]


def test_openapi_describes_every_route_from_the_schemas(client):
    spec = client.get("/openapi.json").json
    assert spec["info"]["title"] == "Invoice view relay"
    assert {"/v1/events", "/v1/events/{event_id}", "/v1/locations",
            "/v1/locations/{location_id}", "/v1/locations/{location_id}/token"} <= set(
        spec["paths"])
    post = spec["paths"]["/v1/events"]["post"]
    assert "202" in post["responses"] and "422" in post["responses"]
    schema = spec["components"]["schemas"]["Event"]
    assert {"locationId", "invoiceId", "estimateId", "eventId", "viewedAt"} <= set(
        schema["properties"])
    assert set(spec["components"]["securitySchemes"]) == {"apiKey"}
    assert client.get("/docs").status_code == 200


def test_admin_routes_need_the_admin_key(client):
    refused = client.get("/v1/locations", headers=ingest_headers())
    assert refused.status_code == 403
    assert refused.json["message"] == "This key lacks the scope read"
    assert client.get("/v1/locations", headers=admin_headers()).status_code == 200


# -- /docs and /openapi.json: served whole by the relay, stable operation ids -------------

DOCS_BASE_URL = "https://relay.example.test"


@pytest.fixture
def docs_client():
    """An app with no store (none is touched) and a PUBLIC_BASE_URL of its own."""
    from service import create_app

    from .conftest import test_config

    app = create_app(test_config("sqlite://", PUBLIC_BASE_URL=DOCS_BASE_URL))
    yield app.test_client()
    app.extensions["service"].engine.dispose()


def docs_asset_urls(page: str) -> list[str]:
    """Every ``src`` and ``href`` of the page, in order."""
    from html.parser import HTMLParser

    class Collect(HTMLParser):
        def __init__(self):
            super().__init__()
            self.urls: list[str] = []

        def handle_starttag(self, tag, attrs):
            self.urls += [v for k, v in attrs if k in ("src", "href") and v is not None]

    parser = Collect()
    parser.feed(page)
    return parser.urls


def test_docs_loads_swagger_ui_from_the_relay_itself(docs_client):
    from pathlib import PurePosixPath
    from urllib.parse import urlsplit

    from service.web.openapi import swagger_ui_dist

    resp = docs_client.get("/docs")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    page = resp.get_data(as_text=True)
    assert "http://" not in page and "https://" not in page and "//" not in page.replace(
        "://", "")  # no CDN, not even a scheme-relative one
    urls = docs_asset_urls(page)
    names = {PurePosixPath(urlsplit(u).path).name for u in urls}
    assert {"swagger-ui-bundle.js", "swagger-ui.css"} <= names, urls
    types = {".js": {"text/javascript", "application/javascript"}, ".css": {"text/css"}}
    for url in urls:
        parts = urlsplit(url)
        assert (parts.scheme, parts.netloc) == ("", "") and parts.path.startswith("/docs/"), url
        with docs_client.get(url) as asset:
            assert asset.status_code == 200, url
            assert asset.mimetype in types[PurePosixPath(parts.path).suffix], (url, asset.mimetype)
            # The package's own file, cacheable for a year (the version is in its path).
            assert asset.data == (swagger_ui_dist() / PurePosixPath(parts.path).name).read_bytes()
            cache = asset.cache_control
        assert cache.max_age >= 365 * 24 * 3600 and cache.immutable, asset.headers
    assert "SwaggerUIBundle(config)" in page and '"/openapi.json"' in page


def test_docs_assets_serve_only_the_pages_files_of_the_installed_version(docs_client):
    from importlib.metadata import version

    current = f"/docs/assets/{version('flask-swagger-ui')}"
    with docs_client.get(f"{current}/swagger-ui-bundle.js") as resp:
        assert resp.status_code == 200
    for path in (f"{current}/oauth2-redirect.html", f"{current}/LICENSE",
                 f"{current}/..%2FVERSION", f"{current}/missing.js",
                 "/docs/assets/0.0.1/swagger-ui-bundle.js"):
        resp = docs_client.get(path)
        assert resp.status_code == 404, path
        assert resp.json["statusCode"] == 404  # the one error shape


def test_openapi_names_every_operation_once(docs_client):
    spec = docs_client.get("/openapi.json").json
    ids = {(method, path): op.get("operationId") for path, item in spec["paths"].items()
           for method, op in item.items() if method != "parameters"}
    assert len(ids) >= 19 and None not in ids.values(), ids
    assert len(set(ids.values())) == len(ids), sorted(ids.values())
    # Stable: generated clients name their methods after these; a change here breaks them.
    assert {
        ("post", "/v1/events"): "postEvents",
        ("get", "/v1/events/{event_id}"): "getEvent",
        ("put", "/v1/locations/{location_id}/token"): "putToken",
        ("delete", "/v1/locations/{location_id}/token"): "deleteToken",
        ("get", "/v1/locations"): "listLocations",
        ("get", "/v1/locations/{location_id}"): "getLocation",
        ("delete", "/v1/locations/{location_id}"): "purgeLocation",
        ("get", "/v1/pixel/{rest}"): "getPixel",
        ("head", "/v1/pixel/{rest}"): "headPixel",
        ("post", "/v1/pixel-urls"): "mintPixelUrl",
        ("get", "/v1/deliveries"): "getDeliveries",
        ("post", "/v1/deliveries/replay"): "postReplay",
    }.items() <= ids.items()


def test_an_operation_id_taken_twice_stops_the_app_and_an_explicit_one_is_kept():
    from flask import Flask
    from flask_smorest import Blueprint

    from service.web.openapi import init_api

    def blueprints(explicit: bool) -> list[Blueprint]:
        made = []
        for name in ("one", "two"):
            bp = Blueprint(name, __name__, url_prefix=f"/{name}")

            @bp.route("", methods=["GET"])
            @bp.doc(**({"operationId": f"{name}Status"} if explicit else {}))
            @bp.response(200)
            def get_status():
                return {}

            made.append(bp)
        return made

    api = init_api(Flask(__name__))
    first, second = blueprints(explicit=False)
    api.register_blueprint(first)
    with pytest.raises(ValueError, match=r"'getStatus' of GET /two is already GET /one's"):
        api.register_blueprint(second)

    api = init_api(Flask(__name__))
    for bp in blueprints(explicit=True):
        api.register_blueprint(bp)
    paths = api.spec.to_dict()["paths"]
    assert [paths[p]["get"]["operationId"] for p in ("/one", "/two")] == ["oneStatus",
                                                                         "twoStatus"]


@pytest.mark.parametrize("configured", [DOCS_BASE_URL, DOCS_BASE_URL + "/"])
def test_openapi_servers_is_the_public_base_url(configured):
    from service import create_app

    from .conftest import test_config

    app = create_app(test_config("sqlite://", PUBLIC_BASE_URL=configured))
    spec = app.test_client().get("/openapi.json").json
    app.extensions["service"].engine.dispose()
    assert spec["servers"] == [{"url": DOCS_BASE_URL}]  # no "/" doubled before each path
