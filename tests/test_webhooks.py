"""POST /webhooks/highlevel: HighLevel's signed app INSTALL / UNINSTALL webhooks.

Payloads are shaped like HighLevel's documented examples (marketplace docs, webhook/AppInstall
and webhook/AppUninstall), plus the ``timestamp`` and ``webhookId`` every webhook carries
(oauth/WebhookAuthentication) and the ``installType`` and ``versionId`` HighLevel's SDKs read.
Each test signs with its own Ed25519 key; rejected requests must leave the store unchanged.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from service import create_app
from service.config import ConfigError
from service.highlevel.webhook_keys import load_public_key, published_rsa_key
from service.ingest.app_webhooks import WebhookReceiver
from service.store.db import documents, installs, locations, webhook_receipts

from .conftest import T0, UNREACHABLE_DB_URL, ingest_headers, make_event, make_view, test_config

APP_ID = "ve9EPM428h8vShlRW1KT"  # HighLevel's example appId; a client id starts with it
CLIENT_ID = f"{APP_ID}-lq8zk2m3"
LOC = "otg8dTQqGLh3Q6iQI55w"
LOC2 = "b7Hq2LmN9pQr4sTuVw1x"
OTHER_LOC = "Zz9yXw8vUt7sRq6pOn5m"
COMPANY = "Cmp4aB5cD6eF7gH8iJ9k"
OTHER_COMPANY = "Oth1aB2cD3eF4gH5iJ6k"
USER = "Usr0aB1cD2eF3gH4iJ5k"
SECRET = "pit-1f0c6e1b-webhook-test-secret"
URL = "/webhooks/highlevel"

KEY = Ed25519PrivateKey.generate()
PEM = KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                    serialization.PublicFormat.SubjectPublicKeyInfo).decode()
RAW_B64 = base64.b64encode(KEY.public_key().public_bytes(
    serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()
TRIAL = {"onTrial": True, "trialDuration": 10, "trialStartDate": "2024-07-23T23:54:51.264Z"}


def stamp(at: dt.datetime = T0) -> str:
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def envelope(webhook_id: str, at: dt.datetime) -> dict:
    return {"timestamp": stamp(at), "webhookId": webhook_id}


def location_install(webhook_id="wh-install-loc-1", at=T0, **overrides) -> dict:
    """AppInstall, "Location Level App Install if company is whitelabeled"."""
    payload = {"type": "INSTALL", "appId": APP_ID, "versionId": APP_ID, "installType": "Location",
               "locationId": LOC, "companyId": COMPANY, "userId": USER,
               "planId": "66a0419a0dffa47fb5f8b22f", "trial": TRIAL,
               "isWhitelabelCompany": True,
               "whitelabelDetails": {"domain": "example.com",
                                     "logoUrl": "https://example.com/logo.png"},
               "companyName": "Example Company", **envelope(webhook_id, at)}
    return _apply(payload, overrides)


def company_install(webhook_id="wh-install-cmp-1", at=T0, **overrides) -> dict:
    """AppInstall, "For Agency Level App Install"."""
    payload = {"type": "INSTALL", "appId": APP_ID, "versionId": APP_ID, "installType": "Company",
               "companyId": COMPANY, "planId": "66a0419a0dffa47fb5f8b22f", "trial": TRIAL,
               **envelope(webhook_id, at)}
    return _apply(payload, overrides)


def location_uninstall(webhook_id="wh-uninstall-loc-1", at=T0, **overrides) -> dict:
    """AppUninstall, "For Location Level App Uninstall"."""
    payload = {"type": "UNINSTALL", "appId": APP_ID, "locationId": LOC,
               **envelope(webhook_id, at)}
    return _apply(payload, overrides)


def company_uninstall(webhook_id="wh-uninstall-cmp-1", at=T0, **overrides) -> dict:
    """AppUninstall, "For Agency Level App Uninstall"."""
    payload = {"type": "UNINSTALL", "appId": APP_ID, "companyId": COMPANY,
               **envelope(webhook_id, at)}
    return _apply(payload, overrides)


def _apply(payload: dict, overrides: dict) -> dict:
    payload.update(overrides)
    return {k: v for k, v in payload.items() if v is not None}


def sign(body: bytes, key: Ed25519PrivateKey = KEY) -> str:
    return base64.b64encode(key.sign(body)).decode()


def encode(payload) -> bytes:
    return payload if isinstance(payload, bytes) else json.dumps(payload).encode()


def post(client, payload, *, headers: dict | None = None, signed: bool = True):
    body = encode(payload)
    sent = {"Content-Type": "application/json"}
    if signed:
        sent["x-ghl-signature"] = sign(body)
    sent.update(headers or {})
    return client.post(URL, data=body, headers=sent)


def snapshot(engine) -> dict:
    """Every row a webhook may touch."""
    with engine.connect() as conn:
        return {table.name: sorted(tuple(row) for row in conn.execute(sa.select(table)))
                for table in (locations, installs, documents, webhook_receipts)}


def install_rows(engine) -> dict:
    with engine.connect() as conn:
        return {(r.target_type, r.target_id): (r.company_id, r.status, r.updated_at)
                for r in conn.execute(sa.select(installs))}


def document_status(engine, location_id: str) -> str:
    with engine.connect() as conn:
        return conn.execute(sa.select(documents.c.status)
                            .where(documents.c.location_id == location_id)).scalar_one()


def receipts(engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.select(webhook_receipts.c.webhook_id)).scalars())


@pytest.fixture
def app(migrated_db_url, clock):
    app = create_app(test_config(migrated_db_url, HIGHLEVEL_WEBHOOK_PUBLIC_KEY=PEM,
                                 HIGHLEVEL_CLIENT_ID=CLIENT_ID))
    svc = app.extensions["service"]
    svc.clock = clock
    yield app
    svc.engine.dispose()


@pytest.fixture
def engine(services):
    return services.engine


@pytest.fixture
def seeded(vault, store, engine):
    """A token and a pending view for LOC and for OTHER_LOC; returns the snapshot."""
    for location_id in (LOC, OTHER_LOC):
        vault.set_token(location_id, access_token=SECRET, now=T0)
        store.record_views([make_view(location_id=location_id)], now=T0)
    return snapshot(engine)


# -- INSTALL ------------------------------------------------------------------------------

def test_location_install_records_the_location_and_its_company(client, engine, seeded):
    resp = post(client, location_install())
    assert resp.status_code == 200 and resp.json == {"status": "installed"}
    assert install_rows(engine) == {("location", LOC): (COMPANY, "installed", T0)}
    assert receipts(engine) == {"wh-install-loc-1"}
    after = snapshot(engine)
    assert after["locations"] == seeded["locations"]  # tokens untouched
    assert after["documents"] == seeded["documents"]


@pytest.mark.parametrize("payload, rows", [
    (company_install(), {("company", COMPANY): (COMPANY, "installed", T0)}),
    (company_install(locationIds=[LOC, LOC2]),  # bulk install from the agency
     {("company", COMPANY): (COMPANY, "installed", T0),
      ("location", LOC): (COMPANY, "installed", T0),
      ("location", LOC2): (COMPANY, "installed", T0)}),
    (company_install(installType=None),  # documented example: no installType, no locationId
     {("company", COMPANY): (COMPANY, "installed", T0)}),
    (location_install(companyId=None, userId=None),  # "future locations": no company id
     {("location", LOC): (None, "installed", T0)}),
], ids=["agency", "bulk", "agency-no-installType", "location-no-company"])
def test_install_table(client, engine, payload, rows):
    resp = post(client, payload)
    assert resp.status_code == 200 and resp.json == {"status": "installed"}
    assert install_rows(engine) == rows


def test_reinstall_after_uninstall_marks_installed_again(client, engine, clock):
    post(client, location_install("wh-1"))
    clock.advance(60)
    post(client, location_uninstall("wh-2", at=clock.now))
    assert install_rows(engine)[("location", LOC)][:2] == (COMPANY, "uninstalled")
    clock.advance(60)
    post(client, location_install("wh-3", at=clock.now))
    assert install_rows(engine)[("location", LOC)] == (COMPANY, "installed", clock.now)


# -- UNINSTALL ----------------------------------------------------------------------------

def test_location_uninstall_removes_its_token_and_parks_its_views(client, engine, vault,
                                                                 seeded, clock):
    post(client, location_install("wh-install"))
    clock.advance(30)
    resp = post(client, location_uninstall(at=clock.now))
    assert resp.status_code == 200 and resp.json == {"status": "uninstalled"}
    assert vault.describe(LOC) is None
    assert document_status(engine, LOC) == "blocked"
    # The install row keeps the company INSTALL named (UNINSTALL does not repeat it).
    assert install_rows(engine)[("location", LOC)] == (COMPANY, "uninstalled", clock.now)
    # Another location is untouched.
    assert vault.describe(OTHER_LOC)["status"] == "active"
    assert document_status(engine, OTHER_LOC) == "pending"


def test_location_uninstall_without_a_prior_install_or_token(client, engine):
    resp = post(client, location_uninstall())
    assert resp.status_code == 200 and resp.json == {"status": "uninstalled"}
    assert install_rows(engine) == {("location", LOC): (None, "uninstalled", T0)}


def test_uninstall_leaves_a_leased_view_to_its_forwarder(client, engine, store, seeded):
    claims = store.claim_due(now=T0, limit=10)
    assert {c.location_id for c in claims} == {LOC, OTHER_LOC}
    post(client, location_uninstall())
    # The send in flight finishes; without a token the forwarder parks it afterwards.
    assert document_status(engine, LOC) == "pending"


def test_company_uninstall_removes_the_agency_and_its_locations(client, engine, vault, store):
    post(client, company_install("wh-a", locationIds=[LOC, LOC2]))
    post(client, location_install("wh-b", locationId=OTHER_LOC, companyId=OTHER_COMPANY))
    vault.set_token(COMPANY, access_token=SECRET, refresh_token="r-" + SECRET, now=T0,
                    company_id=COMPANY)
    for location_id in (LOC, LOC2, OTHER_LOC):
        vault.set_token(location_id, access_token=SECRET, now=T0, company_id=COMPANY)
    store.record_views([make_view(location_id=LOC), make_view(location_id=OTHER_LOC)], now=T0)

    resp = post(client, company_uninstall())
    assert resp.status_code == 200 and resp.json == {"status": "uninstalled"}
    assert [vault.describe(i) for i in (COMPANY, LOC, LOC2)] == [None, None, None]
    assert document_status(engine, LOC) == "blocked"
    # OTHER_LOC's install row names another agency: its token and views stay.
    assert vault.describe(OTHER_LOC)["status"] == "active"
    assert document_status(engine, OTHER_LOC) == "pending"
    assert install_rows(engine) == {
        ("company", COMPANY): (COMPANY, "uninstalled", T0),
        ("location", LOC): (COMPANY, "uninstalled", T0),
        ("location", LOC2): (COMPANY, "uninstalled", T0),
        ("location", OTHER_LOC): (OTHER_COMPANY, "installed", T0),
    }


def test_uninstall_naming_a_location_is_that_locations_only(client, engine, vault, seeded):
    # Both ids present: the narrower reading (as HighLevel's SDK): only the location goes.
    vault.set_token(COMPANY, access_token=SECRET, now=T0)
    post(client, location_uninstall(companyId=COMPANY))
    assert vault.describe(LOC) is None
    assert vault.describe(COMPANY) is not None
    assert install_rows(engine) == {("location", LOC): (COMPANY, "uninstalled", T0)}


# -- rejected: nothing changes ------------------------------------------------------------

def _tampered(client):
    body = encode(location_uninstall())
    signature = sign(body)
    return client.post(URL, data=body.replace(LOC.encode(), OTHER_LOC.encode()),
                       headers={"x-ghl-signature": signature})


def _other_key(client):
    body = encode(location_uninstall())
    return client.post(URL, data=body,
                       headers={"x-ghl-signature": sign(body, Ed25519PrivateKey.generate())})


def _reserialized(client):
    # Signed over one serialisation, sent in another: the raw bytes are what count.
    payload = location_uninstall()
    return client.post(URL, data=json.dumps(payload, indent=2).encode(),
                       headers={"x-ghl-signature": sign(json.dumps(payload).encode())})


REJECTED = [
    ("missing signature", lambda c: post(c, location_uninstall(), signed=False), 401),
    ("empty signature", lambda c: post(c, location_uninstall(),
                                       headers={"x-ghl-signature": ""}), 401),
    ("invalid signature", lambda c: post(c, location_uninstall(), headers={
        "x-ghl-signature": base64.b64encode(b"\x01" * 64).decode()}), 401),
    ("signature not base64", lambda c: post(c, location_uninstall(),
                                            headers={"x-ghl-signature": "not base64!"}), 401),
    ("signature too short", lambda c: post(c, location_uninstall(), headers={
        "x-ghl-signature": base64.b64encode(b"\x01" * 32).decode()}), 401),
    ("signed by another key", _other_key, 401),
    ("body tampered after signing", _tampered, 401),
    ("re-serialised body", _reserialized, 401),
    ("legacy header, not HighLevel's key", lambda c: post(c, location_uninstall(), signed=False,
                                                          headers={"x-wh-signature": "AAAA"}),
     401),
    ("stale timestamp", lambda c: post(c, location_uninstall(at=T0 - dt.timedelta(seconds=301))),
     401),
    ("future timestamp", lambda c: post(c, location_uninstall(at=T0 + dt.timedelta(seconds=301))),
     401),
    ("malformed JSON", lambda c: post(c, b'{"type": "UNINSTALL", '), 400),
    ("not UTF-8", lambda c: post(c, b'{"type": "\xff"}'), 400),
    ("JSON array", lambda c: post(c, [location_uninstall()]), 400),
    ("missing type", lambda c: post(c, location_uninstall(type=None)), 400),
    ("type not a string", lambda c: post(c, location_uninstall(type=7)), 400),
    ("missing webhookId", lambda c: post(c, location_uninstall(webhookId=None)), 400),
    ("webhookId too long", lambda c: post(c, location_uninstall(webhookId="w" * 101)), 400),
    ("missing timestamp", lambda c: post(c, location_uninstall(timestamp=None)), 400),
    ("timestamp not ISO 8601", lambda c: post(c, location_uninstall(timestamp="yesterday")), 400),
    ("timestamp a number", lambda c: post(c, location_uninstall(timestamp=1767614400000)), 400),
    ("no locationId or companyId", lambda c: post(c, location_uninstall(locationId=None)), 400),
    ("locationId malformed", lambda c: post(c, location_uninstall(locationId="a b/c")), 400),
    ("companyId not a string", lambda c: post(c, company_uninstall(companyId=["x"])), 400),
    ("locationIds not a list", lambda c: post(c, company_install(locationIds=LOC)), 400),
    ("locationIds with a bad id", lambda c: post(c, company_install(locationIds=[LOC, ""])),
     400),
    # Python's "$" matches before a final newline: ids are checked in full (issue 13).
    ("locationId ending in a newline",
     lambda c: post(c, location_uninstall(locationId=LOC + "\n")), 400),
    ("companyId ending in a newline",
     lambda c: post(c, company_uninstall(companyId=COMPANY + "\n")), 400),
    ("locationIds with an id ending in a newline",
     lambda c: post(c, company_install(locationIds=[LOC2 + "\n"])), 400),
    ("webhookId ending in a newline",
     lambda c: post(c, location_uninstall(webhookId="wh-uninstall-loc-1\n")), 400),
]


@pytest.mark.parametrize("send, status", [r[1:] for r in REJECTED], ids=[r[0] for r in REJECTED])
def test_rejected_requests_change_nothing(client, engine, seeded, send, status):
    resp = send(client)
    assert resp.status_code == status
    assert resp.json["statusCode"] == status and resp.json["message"]
    assert snapshot(engine) == seeded


@pytest.mark.parametrize("offset", [-300, 300, 0])
def test_timestamps_within_five_minutes_are_fresh(client, vault, seeded, offset):
    resp = post(client, location_uninstall(at=T0 + dt.timedelta(seconds=offset)))
    assert resp.status_code == 200
    assert vault.describe(LOC) is None


def test_a_timestamp_without_offset_is_read_as_utc(client, vault, seeded):
    resp = post(client, location_uninstall(timestamp="2026-01-05T12:01:00"))
    assert resp.status_code == 200 and vault.describe(LOC) is None


# -- replays ------------------------------------------------------------------------------

@pytest.mark.parametrize("first, second", [
    (location_install("wh-1"), location_install("wh-1")),
    (location_uninstall("wh-1"), location_uninstall("wh-1")),
    # Same webhookId, different event (re-signed): the id alone decides.
    (location_install("wh-1"), location_uninstall("wh-1")),
    (company_install("wh-1", locationIds=[LOC]), company_uninstall("wh-1")),
], ids=["install-twice", "uninstall-twice", "install-then-uninstall", "company"])
def test_a_repeated_webhook_id_changes_nothing(client, engine, vault, store, clock, first,
                                               second):
    assert post(client, first).json["status"] in ("installed", "uninstalled")
    # Meanwhile: a new token is stored and new views arrive.
    clock.advance(60)
    for location_id in (LOC, COMPANY):
        vault.set_token(location_id, access_token=SECRET, now=clock.now)
    store.record_views([make_view(clock.now, location_id=LOC, document_id="inv_2")],
                       now=clock.now)
    before = snapshot(engine)
    resp = post(client, second)
    assert resp.status_code == 200 and resp.json == {"status": "duplicate"}
    assert snapshot(engine) == before
    assert vault.describe(LOC)["status"] == "active"


def test_receipts_older_than_a_day_are_pruned(client, engine, clock):
    post(client, location_install("wh-old"))
    clock.advance(86400 + 1)
    post(client, location_install("wh-new", at=clock.now))
    assert receipts(engine) == {"wh-new"}


# -- other events, other apps, no key -----------------------------------------------------

@pytest.mark.parametrize("payload", [
    # The guide's sample event, and one with no timestamp or webhookId: neither is needed.
    {"type": "ContactCreate", "timestamp": stamp(), "webhookId": "test-123",
     "data": {"firstName": "John", "lastName": "Doe", "email": "john@example.com"}},
    {"type": "LocationCreate", "id": OTHER_LOC, "companyId": COMPANY},
    # Stale, but ignored anyway: it would change nothing.
    {"type": "InvoiceSent", "locationId": LOC, "timestamp": "2020-01-01T00:00:00Z"},
], ids=["ContactCreate", "LocationCreate", "InvoiceSent"])
def test_other_event_types_are_ignored(client, engine, seeded, payload):
    resp = post(client, payload)
    assert resp.status_code == 200 and resp.json == {"status": "ignored"}
    assert snapshot(engine) == seeded


def test_other_event_types_still_need_a_signature(client, engine, seeded):
    resp = post(client, {"type": "ContactCreate"}, signed=False)
    assert resp.status_code == 401
    assert snapshot(engine) == seeded


@pytest.mark.parametrize("app_id", ["AnotherApp0000000000", None])
def test_another_apps_webhook_is_ignored(client, engine, seeded, app_id):
    # HighLevel signs every app's webhooks with the same key: another app's UNINSTALL,
    # replayed here by whoever received it, must not remove our tokens.
    resp = post(client, location_uninstall(appId=app_id))
    assert resp.status_code == 200 and resp.json == {"status": "ignored"}
    assert snapshot(engine) == seeded


def test_without_a_client_id_any_app_is_accepted(migrated_db_url, clock):
    app = create_app(test_config(migrated_db_url, HIGHLEVEL_WEBHOOK_PUBLIC_KEY=PEM))
    app.extensions["service"].clock = clock
    try:
        resp = post(app.test_client(), location_install(appId="AnotherApp0000000000"))
        assert resp.json == {"status": "installed"}
    finally:
        app.extensions["service"].engine.dispose()


@pytest.mark.parametrize("signed", [True, False])
def test_no_key_configured_answers_503_and_changes_nothing(migrated_db_url, clock, signed):
    app = create_app(test_config(migrated_db_url))
    engine = app.extensions["service"].engine
    try:
        before = snapshot(engine)
        resp = post(app.test_client(), location_uninstall(), signed=signed)
        assert resp.status_code == 503
        assert resp.json == {"statusCode": 503,
                             "message": "HIGHLEVEL_WEBHOOK_PUBLIC_KEY is not configured"}
        assert snapshot(engine) == before
    finally:
        engine.dispose()


def test_store_down_answers_429_so_highlevel_retries(clock):
    # HighLevel retries a webhook only on 429: the app-wide 503 would lose this UNINSTALL.
    app = create_app(test_config(UNREACHABLE_DB_URL, HIGHLEVEL_WEBHOOK_PUBLIC_KEY=PEM,
                                 HIGHLEVEL_CLIENT_ID=CLIENT_ID))
    app.extensions["service"].clock = clock
    client = app.test_client()
    try:
        resp = post(client, location_uninstall())
        assert resp.status_code == 429
        assert resp.headers["Retry-After"] == "600"
        assert resp.json == {"statusCode": 429,
                             "message": "The store is unavailable; retry later"}
        # The signature is still checked first, and other routes keep their 503.
        assert post(client, location_uninstall(), signed=False).status_code == 401
        assert client.post("/v1/events", json=make_event(),
                           headers=ingest_headers()).status_code == 503
    finally:
        app.extensions["service"].engine.dispose()


# -- the legacy RSA signature (x-wh-signature) ---------------------------------------------

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def rsa_sign(body: bytes) -> str:
    return base64.b64encode(RSA_KEY.sign(body, padding.PKCS1v15(), hashes.SHA256())).decode()


@pytest.fixture
def rsa_app(app):
    """The app with a test RSA key standing in for HighLevel's published one."""
    app.extensions["service"].app_webhooks = WebhookReceiver(
        load_public_key(PEM), app_id=APP_ID, rsa_key=RSA_KEY.public_key())
    return app


def test_legacy_rsa_signature_is_accepted(rsa_app, vault, seeded):
    body = encode(location_uninstall())
    resp = rsa_app.test_client().post(URL, data=body, headers={"x-wh-signature": rsa_sign(body)})
    assert resp.status_code == 200 and resp.json == {"status": "uninstalled"}
    assert vault.describe(LOC) is None


@pytest.mark.parametrize("headers", [
    # Ed25519 decides when present: a valid RSA signature does not rescue a bad one.
    lambda body: {"x-ghl-signature": sign(body, Ed25519PrivateKey.generate()),
                  "x-wh-signature": rsa_sign(body)},
    lambda body: {"x-wh-signature": rsa_sign(body + b" ")},
], ids=["bad-ed25519-good-rsa", "rsa-over-other-bytes"])
def test_legacy_rsa_signature_rejections(rsa_app, engine, seeded, headers):
    body = encode(location_uninstall())
    resp = rsa_app.test_client().post(URL, data=body, headers=headers(body))
    assert resp.status_code == 401
    assert snapshot(engine) == seeded


def test_highlevels_published_rsa_key_loads():
    key = published_rsa_key()
    assert key.key_size == 4096 and key.public_numbers().e == 65537


# -- the key setting ----------------------------------------------------------------------

@pytest.mark.parametrize("value", [PEM, RAW_B64, PEM.replace("\n", "\\n"), f"  {PEM}\n"],
                         ids=["pem", "raw-base64", "pem-one-line", "whitespace"])
def test_public_key_formats(value):
    key = load_public_key(value)
    body = b'{"type": "INSTALL"}'
    key.verify(KEY.sign(body), body)  # raises if it is not the same key


RSA_PEM = RSA_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.mark.parametrize("value", [
    "not a key", RAW_B64[:-4], base64.b64encode(b"k" * 31).decode(), RSA_PEM,
    "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
], ids=["text", "truncated", "31-bytes", "rsa-pem", "bad-pem"])
def test_a_malformed_key_stops_the_app_naming_the_setting(migrated_db_url, value):
    with pytest.raises(ConfigError, match="HIGHLEVEL_WEBHOOK_PUBLIC_KEY"):
        create_app(test_config(migrated_db_url, HIGHLEVEL_WEBHOOK_PUBLIC_KEY=value))


# -- logs and docs ------------------------------------------------------------------------

def test_logs_name_the_webhook_but_never_the_body_or_a_token(client, seeded, caplog):
    caplog.set_level(logging.DEBUG)
    payload = location_install()
    post(client, payload)
    post(client, location_uninstall())
    post(client, location_uninstall(at=T0 - dt.timedelta(hours=1)))  # rejected
    received = [r for r in caplog.records if r.getMessage() == "webhook.received"]
    assert [(r.type, r.webhook_id, r.location_id) for r in received] == [
        ("INSTALL", "wh-install-loc-1", LOC), ("UNINSTALL", "wh-uninstall-loc-1", LOC),
        ("UNINSTALL", "wh-uninstall-loc-1", LOC)]
    assert [r.reason for r in caplog.records if r.getMessage() == "webhook.rejected"] == [
        "stale"]
    assert SECRET not in caplog.text
    assert "Example Company" not in caplog.text and "example.com" not in caplog.text
    assert json.dumps(payload) not in caplog.text


def test_openapi_documents_the_route(client):
    spec = client.get("/openapi.json").json
    post_op = spec["paths"]["/webhooks/highlevel"]["post"]
    assert {"200", "400", "401", "429", "503"} <= set(post_op["responses"])
    assert {p["name"] for p in post_op["parameters"]} >= {"x-ghl-signature", "x-wh-signature"}
