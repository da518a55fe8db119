"""JSON nested thousands of levels deep is a 400 on every route that reads JSON (issue 13,
item 3).

``json.loads`` raises ``RecursionError`` (not a ``ValueError``) on such a body: it was a 500
with a traceback on ``POST /v1/events``, and on the Mailgun and SES sources before anything
was verified. Each route here gets a body it would otherwise accept (right key, valid
signature), and must answer DESIGN.md's error shape, log one line without a traceback, and
store nothing.
"""

from __future__ import annotations

import base64
import json
import logging

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from service import create_app
from service.ingest.signatures import CertificateFetcher
from service.safejson import MAX_DEPTH
from service.store.db import events, installs, locations, used_webhook_tokens, webhook_receipts

from .conftest import T0, admin_headers, ingest_headers, make_event, test_config
from .source_payloads import (
    basic_auth,
    internal_request,
    make_keys,
    sendgrid_request,
    ses_open,
    sns_headers,
    sns_notification,
    sns_sign,
)

DEPTH = 5_000
WEBHOOK_KEY = Ed25519PrivateKey.generate()
WEBHOOK_PEM = WEBHOOK_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
# What a refusal logs: one of these, once.
REJECTED = {"request.invalid_json", "source.rejected", "webhook.rejected"}
TABLES = (events, locations, installs, webhook_receipts, used_webhook_tokens)


def nested(depth: int, *, kind: str = "array") -> bytes:
    """A JSON document nested ``depth`` levels (built as text: json.dumps would recurse)."""
    if kind == "array":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * (depth - 1) + b"{}" + b"}" * (depth - 1)


@pytest.fixture
def keys():
    return make_keys()


@pytest.fixture
def app(migrated_db_url, clock, keys):
    """Every source and the HighLevel webhook key configured: each route reads its body."""
    app = create_app(test_config(migrated_db_url, HIGHLEVEL_WEBHOOK_PUBLIC_KEY=WEBHOOK_PEM,
                                 **keys.config()))
    app.extensions["service"].clock = clock
    app.extensions["service"].sources.ses.certificates = CertificateFetcher(
        lambda url: keys.sns_cert_pem)
    yield app
    app.extensions["service"].engine.dispose()


def row_counts(services) -> dict:
    with services.engine.connect() as conn:
        return {t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar()
                for t in TABLES}


def sns_with_message(keys, message: str) -> dict:
    """A notification SNS really signed, whose ``Message`` is ``message``."""
    notification = sns_notification(ses_open(), key=keys.sns, at=T0)
    return sns_sign({**notification, "Message": message}, key=keys.sns)


def send(client, keys, route: str, body: bytes):
    """POST or PUT ``body`` to ``route`` with what the route needs besides a good body."""
    json_type = {"Content-Type": "application/json"}
    if route == "events":
        return client.post("/v1/events", data=body, headers=ingest_headers(**json_type))
    if route == "token":
        return client.put("/v1/locations/loc_1/token", data=body,
                          headers=admin_headers(**json_type))
    if route == "pixel-urls":
        return client.post("/v1/pixel-urls", data=body, headers=admin_headers(**json_type))
    if route == "replay":
        return client.post("/v1/deliveries/replay", data=body,
                           headers=admin_headers(**json_type))
    if route == "mailgun":  # unauthenticated: the signature is inside the body
        return client.post("/v1/sources/mailgun", data=body, headers=json_type)
    if route == "ses":  # unauthenticated: the signature is inside the body
        return client.post("/v1/sources/ses", data=body,
                           headers={"Content-Type": "text/plain; charset=UTF-8"})
    if route == "ses-message":  # signed by SNS; the SES event inside is the deep part
        message = sns_with_message(keys, body.decode())
        return client.post("/v1/sources/ses", data=json.dumps(message),
                           headers=sns_headers(message))
    if route == "sendgrid":
        body, headers = sendgrid_request(None, key=keys.sendgrid, at=T0, body=body)
        return client.post("/v1/sources/sendgrid", data=body, headers=headers)
    if route == "postmark":
        return client.post("/v1/sources/postmark", data=body,
                           headers={**basic_auth(keys.postmark), **json_type})
    if route == "internal":
        body, headers = internal_request(None, secret=keys.internal[0], at=T0, body=body)
        return client.post("/v1/sources/internal", data=body, headers=headers)
    if route == "highlevel":
        signature = base64.b64encode(WEBHOOK_KEY.sign(body)).decode()
        return client.post("/webhooks/highlevel", data=body,
                           headers={"x-ghl-signature": signature, **json_type})
    raise AssertionError(route)


ROUTES = ["events", "token", "pixel-urls", "replay", "mailgun", "ses", "ses-message",
          "sendgrid", "postmark", "internal", "highlevel"]


@pytest.mark.parametrize("kind", ["array", "object"])
@pytest.mark.parametrize("route", ROUTES)
def test_deeply_nested_json_is_400_logged_once_and_stores_nothing(client, services, keys,
                                                                   caplog, route, kind):
    caplog.set_level(logging.INFO)
    resp = send(client, keys, route, nested(DEPTH, kind=kind))
    assert resp.status_code == 400, resp.get_data(as_text=True)[:300]
    assert resp.json["statusCode"] == 400
    assert resp.json["message"] == f"The body is nested more than {MAX_DEPTH} levels deep"
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in caplog.records if r.getMessage() in REJECTED] == [
        "request.invalid_json" if route in ("events", "token", "pixel-urls", "replay",
                                            "internal")
        else "webhook.rejected" if route == "highlevel" else "source.rejected"]
    assert set(row_counts(services).values()) == {0}


@pytest.mark.parametrize("route", ["events", "mailgun", "internal", "highlevel"])
def test_nesting_past_the_limit_is_refused_even_when_python_could_parse_it(client, services,
                                                                           keys, route):
    resp = send(client, keys, route, nested(MAX_DEPTH + 1))
    assert resp.status_code == 400
    assert "nested more than" in resp.json["message"]
    assert set(row_counts(services).values()) == {0}


def test_nesting_within_the_limit_is_read_as_before(client, services):
    """An event whose free-text field holds a nested value is still a field error, not 400."""
    body = json.dumps(make_event(source=json.loads(nested(MAX_DEPTH - 1))))
    resp = client.post("/v1/events", data=body, headers=ingest_headers(
        **{"Content-Type": "application/json"}))
    assert resp.status_code == 422, resp.json
    assert "source" in resp.json["errors"]


@pytest.mark.parametrize("route", ["events", "token", "mailgun", "ses", "highlevel"])
def test_malformed_json_is_still_400_not_json(client, keys, route):
    resp = send(client, keys, route, b'{"locationId": ')
    assert resp.status_code == 400
    assert resp.json["message"] == "The body is not valid JSON"
