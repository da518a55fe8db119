"""Schemathesis fuzzes the service against its own ``/openapi.json`` (issue #6, item 5).

No request may get a 5xx, and every response must be what the document says: a declared status
(or ``default``), the declared content type, a body valid against the declared schema. Every
operation is fuzzed with the key its security scheme takes, and with a wrong key or none.

The run is deterministic (derandomized Hypothesis, no example database) and bounded
(``MAX_EXAMPLES`` per operation in the fuzzing phase, plus schemathesis's coverage phase).
Each test item gets a fresh migrated store (SQLite; PostgreSQL too with TEST_DATABASE_URL)
holding a few rows of every kind, so list endpoints answer with items to validate.
"""

from __future__ import annotations

import datetime as dt
import zlib

import pytest
import schemathesis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service import create_app
from service.forward.credentials import TokenProvider
from service.store.queue import Outcome

from .conftest import ADMIN_KEY, INGEST_KEY, T0, make_view, test_config
from .source_payloads import make_keys

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
MAX_EXAMPLES = 30
KEYS = {"apiKey": ADMIN_KEY}  # security scheme -> key (admin holds every scope)
UNKNOWN_KEY = "hlr_" + "u" * 43  # shaped like a stored key, stored nowhere
CONFIG = {
    "seed": 20260105,
    "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
    "auth": {"openapi": {name: {"bearer": key} for name, key in KEYS.items()}},
}
# What the runs without keys send instead of the operation's key: nothing, a key without
# the scope (the ingest key on a route that needs another...), an unknown key, an empty
# one, Basic.
OTHER_SCOPE = "other scope"
WRONG_CREDENTIALS = [None, OTHER_SCOPE, "Bearer ik_unknown", "Bearer ", "Basic dXNlcjpwYXNz"]
WEBHOOK_KEY = Ed25519PrivateKey.generate().public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _load_schema():
    """The service's own ``/openapi.json``, read over WSGI when the module loads (parametrize
    needs the operations then) from an app with no store: building one does not touch it.
    Requests go to ``fuzz_app``, which serves the same document (checked below).

    Not ``schemathesis.pytest.from_fixture``: with pytest 9.2 it fails (schemathesis 4.32
    reads ``Function._nodeid``, which pytest removed)."""
    return schemathesis.openapi.from_wsgi("/openapi.json", create_app(test_config("sqlite://")),
                                          config=schemathesis.Config.from_dict(CONFIG))


schema = _load_schema()


def _seed(services) -> dict:
    """Rows of every kind: tokens (PIT, OAuth, invalid), events queued, delivered, failed,
    filtered, and their delivery-log rows. Returns the event ids by status."""
    vault, store = services.vault, services.store
    vault.set_token("loc_pit", access_token="pit-0123456789abcdef", now=T0)
    vault.set_token("loc_oauth", access_token="eyJaccess0123456789", refresh_token="refresh-0123",
                    expires_at=T0 + dt.timedelta(days=1), company_id="CMP1", now=T0)
    vault.set_token("loc_bad", access_token="pit-revoked-0123456", now=T0)
    tokens = TokenProvider(vault)  # a 403 invalidates a token at once
    assert tokens.record_rejection(tokens.get("loc_bad", now=T0), status=403, now=T0,
                                   message="The token is not authorized for this scope.") \
        == "invalid"
    views = [make_view(T0, location_id="loc_pit", document_id=f"inv_{i}", event_key=f"evt_{i}",
                       source="api", user_agent="Mozilla/5.0", ip="203.0.113.7")
             for i in range(3)]
    views.append(make_view(T0, location_id="loc_pit", document_id="inv_bot", verdict="bot",
                           verdict_reason="ua:scanner", forward=False))
    accepted = store.record_views(views, now=T0)
    claims = {c.document_id: c for c in store.claim_due(now=T0, limit=10)}
    store.record_outcomes([
        (claims["inv_0"], Outcome("delivered", "delivered", http_status=200, latency_ms=30)),
        (claims["inv_1"], Outcome("dead", "permanent", http_status=404,
                                  message="Invoice not found", trace_id="t-1", latency_ms=12)),
        (claims["inv_2"], Outcome("retry", "network_error",
                                  next_due=T0 + dt.timedelta(seconds=5))),
    ], now=T0)
    services.keys.create("fuzz", ["read"], now=T0)  # id 1
    return {status: a.id for status, a in zip(
        ["delivered", "failed", "queued", "filtered"], accepted, strict=True)}


@pytest.fixture
def fuzz_app(migrated_db_url, clock):
    """An app on a fresh migrated store, seeded, every source and the webhook key configured
    (so those routes check signatures instead of answering 503 "not configured")."""
    app = create_app(test_config(migrated_db_url, HIGHLEVEL_WEBHOOK_PUBLIC_KEY=WEBHOOK_KEY,
                                 **make_keys().config()))
    svc = app.extensions["service"]
    svc.clock = clock
    app.extensions["fuzz_seed"] = _seed(svc)
    yield app
    svc.engine.dispose()


def _other_scope_key(case) -> str:
    """A key the operation does not take: the ingest key where events:write does not do;
    elsewhere (the admin key holds every scope) a stored-key-shaped key stored nowhere."""
    scopes = case.operation.definition.raw.get("x-scopes") or []
    return f"Bearer {UNKNOWN_KEY if 'events:write' in scopes else INGEST_KEY}"


def _wrong_credentials(case) -> str | None:
    """One of WRONG_CREDENTIALS, picked from the case's own data: deterministic, and the
    coverage phase stays on (schemathesis skips it for tests with extra ``given`` arguments)."""
    data = repr((case.path_parameters, case.query, case.body)).encode()
    wrong = WRONG_CREDENTIALS[zlib.crc32(data) % len(WRONG_CREDENTIALS)]
    return _other_scope_key(case) if wrong == OTHER_SCOPE else wrong


def test_fuzzed_app_serves_the_same_document(fuzz_app):
    assert fuzz_app.test_client().get("/openapi.json").json == schema.raw_schema


# The pytest parametrization also keeps "[METHOD /path]" in the test ids (pytest 9.2 drops it
# from schemathesis's items otherwise).
@pytest.mark.parametrize("credentials", ["keys", "wrong-or-none"])
@schema.parametrize()
# One store per operation, shared by its examples on purpose (they build on each other's rows).
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_fuzz(case, credentials, fuzz_app):
    if credentials != "keys":
        case.headers.pop("Authorization", None)
        wrong = _wrong_credentials(case)
        if wrong is not None:
            case.headers["Authorization"] = wrong
    case.call_and_validate(app=fuzz_app, checks=CHECKS)


def _validate(fuzz_app, path: str, method: str, **kwargs) -> int:
    """Send one hand-made case through schemathesis and its checks; return the status."""
    response = schema[path][method].Case(**kwargs).call_and_validate(app=fuzz_app, checks=CHECKS)
    return response.status_code


def test_seeded_rows_are_documented(fuzz_app):
    """What the fuzz cannot guess: existing event and location ids."""
    ingest, admin = {"Authorization": f"Bearer {INGEST_KEY}"}, {
        "Authorization": f"Bearer {ADMIN_KEY}"}
    for event_id in fuzz_app.extensions["fuzz_seed"].values():
        assert _validate(fuzz_app, "/v1/events/{event_id}", "GET", headers=ingest,
                         path_parameters={"event_id": event_id}) == 200
    for location_id in ("loc_pit", "loc_oauth", "loc_bad"):
        assert _validate(fuzz_app, "/v1/locations/{location_id}", "GET", headers=admin,
                         path_parameters={"location_id": location_id}) == 200
    assert _validate(fuzz_app, "/v1/locations/{location_id}/token", "DELETE", headers=admin,
                     path_parameters={"location_id": "loc_oauth"}) == 204
    assert _validate(fuzz_app, "/v1/keys", "GET", headers=admin) == 200
    assert _validate(fuzz_app, "/v1/keys/{key_id}", "DELETE", headers=admin,
                     path_parameters={"key_id": 1}) == 204


@pytest.mark.parametrize(("path", "method", "kwargs"), [
    # Found by the fuzz: a cursor past BIGINT reached the database (OverflowError, 500).
    ("/v1/deliveries", "GET", {"query": {"cursor": 2**63}}),
    # Times that do not exist in UTC (year 0, year 10000) failed converting for the store.
    ("/v1/deliveries", "GET", {"query": {"since": "0001-01-01T00:00:00+05:00"}}),
    ("/v1/deliveries", "GET", {"query": {"until": "9999-12-31T23:59:59-05:00"}}),
    ("/v1/deliveries/replay", "POST", {"body": {"since": "0001-01-01T00:00:00+05:00"}}),
    ("/v1/locations/{location_id}/token", "PUT", {
        "path_parameters": {"location_id": "loc_1"},
        "body": {"accessToken": "pit-0123456789", "expiresAt": "9999-12-31T23:59:59-05:00"}}),
    ("/v1/events", "POST", {"body": {"events": [{
        "locationId": "loc_1", "invoiceId": "inv_1", "viewedAt": "0001-01-01T00:00:00+05:00"}]}}),
    # NUL: PostgreSQL cannot store or compare it in text (500 there, not on SQLite).
    ("/v1/events", "POST", {"body": {"events": [{
        "locationId": "loc_1", "invoiceId": "inv_1", "source": "a\x00b"}]}}),
    ("/v1/events", "POST", {"body": {"events": [{
        "locationId": "loc_1", "invoiceId": "inv_1", "userAgent": "a\x00b"}]}}),
    ("/v1/events", "POST", {"body": {"events": [{
        "locationId": "loc_1", "invoiceId": "inv_1", "ip": "fe80::1%\x00"}]}}),
    ("/v1/deliveries", "GET", {"query": {"outcome": "a\x00b"}}),
    ("/v1/events/{event_id}", "GET", {"path_parameters": {"event_id": "a\x00b"}}),
])
def test_edge_cases_are_client_errors(fuzz_app, path, method, kwargs):
    """Values at the edges the fuzz reaches rarely or not at all: 4xx, as documented."""
    operation = schema[path][method]
    schemes = {name for req in operation.definition.raw.get("security") or [] for name in req}
    headers = {"Authorization": f"Bearer {KEYS[schemes.pop()]}"}
    assert 400 <= _validate(fuzz_app, path, method, headers=headers, **kwargs) < 500


@pytest.mark.parametrize("field", ["source", "userAgent", "ip"])
def test_lone_surrogates_are_client_errors(fuzz_app, field):
    """JSON can carry a lone surrogate ("\\ud800"), which no store can encode: a 500 before.
    Schemathesis never generates one (it cannot send it as UTF-8), so the body is raw JSON."""
    value = "fe80::1%\\ud800" if field == "ip" else "a\\ud800b"
    body = f'{{"locationId": "loc_1", "invoiceId": "inv_1", "{field}": "{value}"}}'
    response = fuzz_app.test_client().post("/v1/events", data=body, headers={
        "Authorization": f"Bearer {INGEST_KEY}", "Content-Type": "application/json"})
    assert response.status_code == 422, response.json
    schema["/v1/events"]["POST"].Case(body={}).validate_response(response, checks=CHECKS)
