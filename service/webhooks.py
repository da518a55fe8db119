"""HighLevel app webhooks (INSTALL, UNINSTALL): verify, parse, apply. No Flask here.

HighLevel signs each webhook over the raw request body:

- ``x-ghl-signature``: Ed25519, base64 (the current scheme). The key is the operator's
  ``HIGHLEVEL_WEBHOOK_PUBLIC_KEY``, as PEM or as the base64 of its 32 raw bytes.
- ``x-wh-signature``: RSA PKCS#1 v1.5 with SHA-256, base64 (the legacy scheme), checked
  against the 4096-bit key HighLevel publishes in its docs (``HIGHLEVEL_RSA_PUBLIC_KEY``).
  Only read when there is no ``x-ghl-signature``: when both come, Ed25519 alone decides,
  as in HighLevel's own SDK.

https://marketplace.gohighlevel.com/docs/webhook/WebhookIntegrationGuide (signature, key,
retries); https://marketplace.gohighlevel.com/docs/oauth/WebhookAuthentication (replay:
``timestamp`` within 5 minutes, reject repeated ``webhookId``);
https://marketplace.gohighlevel.com/docs/webhook/AppInstall and ``.../AppUninstall``
(payloads); GoHighLevel/highlevel-api-python ``webhook/webhook_manager.py`` and
GoHighLevel/highlevel-api-sdk ``lib/webhook/webhook-manager.ts`` (both headers, which
fields arrive: ``installType``, ``versionId``, ``locationIds`` for bulk installs; the app id
is the client id's part before ``-``).

A webhook's effect and its receipt (``webhook_receipts``, the replay guard) are written in
one transaction, so a repeated ``webhookId`` changes nothing and a failed effect leaves no
receipt behind.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.engine import Engine

from .config import ConfigError
from .db import dialect_insert, documents, installs, locations, webhook_receipts
from .store import BLOCKED, PENDING

logger = logging.getLogger(__name__)

SETTING = "HIGHLEVEL_WEBHOOK_PUBLIC_KEY"
INSTALL, UNINSTALL = "INSTALL", "UNINSTALL"
LOCATION, COMPANY = "location", "company"
INSTALLED, UNINSTALLED = "installed", "uninstalled"
# HighLevel's guide: accept a timestamp within 5 minutes (either way: clocks drift).
TOLERANCE = dt.timedelta(minutes=5)
# Receipts only need to outlive the tolerance window; a day leaves a wide margin.
RECEIPT_TTL = dt.timedelta(days=1)
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_WEBHOOK_ID = re.compile(r"^[\x21-\x7e]{1,100}$")  # fits webhook_receipts.webhook_id

# The legacy RSA key, as published in HighLevel's Webhook Integration Guide ("GHL Public
# Key") and its Webhook Authentication Guide; the same for every app.
HIGHLEVEL_RSA_PUBLIC_KEY = b"""-----BEGIN PUBLIC KEY-----
MIICIjANBgkqhkiG9w0BAQEFAAOCAg8AMIICCgKCAgEAokvo/r9tVgcfZ5DysOSC
Frm602qYV0MaAiNnX9O8KxMbiyRKWeL9JpCpVpt4XHIcBOK4u3cLSqJGOLaPuXw6
dO0t6Q/ZVdAV5Phz+ZtzPL16iCGeK9po6D6JHBpbi989mmzMryUnQJezlYJ3DVfB
csedpinheNnyYeFXolrJvcsjDtfAeRx5ByHQmTnSdFUzuAnC9/GepgLT9SM4nCpv
uxmZMxrJt5Rw+VUaQ9B8JSvbMPpez4peKaJPZHBbU3OdeCVx5klVXXZQGNHOs8gF
3kvoV5rTnXV0IknLBXlcKKAQLZcY/Q9rG6Ifi9c+5vqlvHPCUJFT5XUGG5RKgOKU
J062fRtN+rLYZUV+BjafxQauvC8wSWeYja63VSUruvmNj8xkx2zE/Juc+yjLjTXp
IocmaiFeAO6fUtNjDeFVkhf5LNb59vECyrHD2SQIrhgXpO4Q3dVNA5rw576PwTzN
h/AMfHKIjE4xQA1SZuYJmNnmVZLIZBlQAF9Ntd03rfadZ+yDiOXCCs9FkHibELhC
HULgCsnuDJHcrGNd5/Ddm5hxGQ0ASitgHeMZ0kcIOwKDOzOU53lDza6/Y09T7sYJ
PQe7z0cvj7aE4B+Ax1ZoZGPzpJlZtGXCsu9aTEGEnKzmsFqwcSsnw3JB31IGKAyk
T1hhTiaCeIY/OwwwNUY2yvcCAwEAAQ==
-----END PUBLIC KEY-----
"""


class WebhookError(Exception):
    """A webhook was refused and changed nothing; ``reason`` is a stable log label."""

    reason = "rejected"


class SignatureError(WebhookError):
    """Unsigned, or not signed by HighLevel over exactly this body."""

    reason = "bad_signature"


class StaleError(WebhookError):
    """Signed, but its ``timestamp`` is too far from our clock: a replay, or a bad clock."""

    reason = "stale"


class MalformedError(WebhookError):
    """Not JSON, or an INSTALL/UNINSTALL lacking a field it needs."""

    reason = "malformed"


@dataclass(frozen=True)
class AppEvent:
    """A verified, well-formed INSTALL or UNINSTALL."""

    type: str  # INSTALL | UNINSTALL
    webhook_id: str
    timestamp: dt.datetime
    target_type: str  # location | company
    target_id: str
    company_id: str | None = None
    # A company (bulk) install lists the locations it covers.
    location_ids: tuple[str, ...] = ()


def load_public_key(value: str) -> Ed25519PublicKey:
    """Parse ``HIGHLEVEL_WEBHOOK_PUBLIC_KEY``: PEM (as HighLevel shows it) or base64 of 32 bytes.

    :raises ConfigError: naming the setting, when it is neither.
    """
    text = value.strip().replace("\\n", "\n")  # a PEM pasted into .env on one line
    if "-----BEGIN" in text:
        try:
            key = serialization.load_pem_public_key(text.encode())
        except (ValueError, UnsupportedAlgorithm):
            raise ConfigError(f"{SETTING}: not a readable PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(f"{SETTING}: must be an Ed25519 key, not {type(key).__name__}")
        return key
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ConfigError(f"{SETTING}: expected a PEM public key or the base64 of the "
                          "32-byte Ed25519 key")
    return Ed25519PublicKey.from_public_bytes(raw)


class WebhookReceiver:
    """Verifies HighLevel app webhooks and applies INSTALL / UNINSTALL to the store."""

    def __init__(self, public_key: Ed25519PublicKey, *, app_id: str | None = None,
                 rsa_key: rsa.RSAPublicKey | None = None):
        self.public_key = public_key
        # None: accept every app's events (no HIGHLEVEL_CLIENT_ID to compare with).
        self.app_id = app_id
        self.rsa_key = rsa_key or _published_rsa_key()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> WebhookReceiver | None:
        """Build the receiver from the settings, or None when no key is configured."""
        value = config.get(SETTING)
        if not value:
            return None
        client_id = config.get("HIGHLEVEL_CLIENT_ID") or ""
        return cls(load_public_key(value), app_id=client_id.split("-")[0] or None)

    def receive(self, engine: Engine, body: bytes, *, ghl_signature: str | None,
                wh_signature: str | None, now: dt.datetime) -> dict:
        """Verify, parse and apply one webhook; return ``{"status": ...}``.

        :raises WebhookError: the request changed nothing (its subclass says why).
        """
        self.verify(body, ghl_signature=ghl_signature, wh_signature=wh_signature)
        payload = read_payload(body)
        kind = payload.get("type")
        if not isinstance(kind, str):
            raise MalformedError("type is missing or not a string")
        logger.info("webhook.received", extra={
            "type": _clip(kind), "webhook_id": _clip(payload.get("webhookId")),
            "location_id": _clip(payload.get("locationId"))})
        if kind not in (INSTALL, UNINSTALL):
            return {"status": "ignored"}  # HighLevel sends many event types; none concern us
        if self.app_id is not None and payload.get("appId") != self.app_id:
            # Signed by HighLevel, but for another app: the published RSA key signs every
            # app's webhooks (and the Ed25519 key may), so that app's owner could replay
            # its own UNINSTALL here.
            logger.warning("webhook.other_app", extra={"app_id": _clip(payload.get("appId"))})
            return {"status": "ignored"}
        event = parse_event(payload)
        check_fresh(event.timestamp, now=now)
        return apply(engine, event, now=now)

    def verify(self, body: bytes, *, ghl_signature: str | None,
               wh_signature: str | None) -> str:
        """Check the body's signature; return the scheme (``ed25519`` or ``rsa``).

        :raises SignatureError: no signature, a malformed one, or one that does not match.
        """
        try:
            if ghl_signature:
                signature = _b64(ghl_signature)
                if len(signature) != 64:
                    raise InvalidSignature
                self.public_key.verify(signature, body)
                return "ed25519"
            if wh_signature:
                self.rsa_key.verify(_b64(wh_signature), body, padding.PKCS1v15(),
                                    hashes.SHA256())
                return "rsa"
        except (InvalidSignature, ValueError):
            raise SignatureError("The webhook signature does not match") from None
        raise SignatureError("The webhook is not signed (x-ghl-signature)")


def read_payload(body: bytes) -> dict:
    """Decode the body as one JSON object.

    :raises MalformedError: not UTF-8 JSON, or not an object.
    """
    try:
        payload = json.loads(body)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both are
        raise MalformedError("The body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise MalformedError("The body is not a JSON object")
    return payload


def parse_event(payload: dict) -> AppEvent:
    """Read an INSTALL or UNINSTALL payload into an ``AppEvent``.

    HighLevel's documented examples tell the kind of install by ``locationId`` (present
    for a location, absent for an agency); its SDK adds ``installType`` ("Location" or
    "Company") and, for a bulk company install, ``locationIds``. An UNINSTALL with a
    ``locationId`` is that location's, as in HighLevel's SDK: the narrower reading, so an
    ambiguous payload never removes a whole agency's tokens.

    :raises MalformedError: a field is missing or not of its form.
    """
    kind = payload["type"]
    webhook_id = payload.get("webhookId")
    if not isinstance(webhook_id, str) or not _WEBHOOK_ID.match(webhook_id):
        raise MalformedError("webhookId is missing or malformed")
    timestamp = _timestamp(payload.get("timestamp"))
    location_id = _optional_id(payload, "locationId")
    company_id = _optional_id(payload, "companyId")
    install_type = payload.get("installType")
    by_company = location_id is None or (
        kind == INSTALL and isinstance(install_type, str) and install_type.lower() == "company")
    if not by_company:
        return AppEvent(kind, webhook_id, timestamp, LOCATION, location_id, company_id)
    if company_id is None:
        raise MalformedError("locationId or companyId is required")
    covered: list = []
    if kind == INSTALL:
        covered = payload.get("locationIds") or []
        if not isinstance(covered, list) or not all(
                isinstance(i, str) and _ID.match(i) for i in covered):
            raise MalformedError("locationIds must be a list of ids")
        if location_id is not None:
            covered = [location_id, *covered]
    return AppEvent(kind, webhook_id, timestamp, COMPANY, company_id, company_id,
                    tuple(dict.fromkeys(covered)))


def check_fresh(timestamp: dt.datetime, *, now: dt.datetime) -> None:
    """Refuse a webhook sent more than ``TOLERANCE`` before or after ``now``.

    :raises StaleError: it is outside the window.
    """
    if abs(now - timestamp) > TOLERANCE:
        raise StaleError("The webhook timestamp is more than 5 minutes from our clock")


def apply(engine: Engine, event: AppEvent, *, now: dt.datetime) -> dict:
    """Record the receipt and apply the event in one transaction; return ``{"status"}``.

    A ``webhookId`` already received answers ``duplicate`` and changes nothing.
    """
    with engine.begin() as conn:
        conn.execute(webhook_receipts.delete().where(
            webhook_receipts.c.received_at < now - RECEIPT_TTL))
        # RETURNING, not rowcount: psycopg reports -1 for INSERT ... ON CONFLICT DO NOTHING.
        fresh = conn.execute(
            dialect_insert(webhook_receipts, conn.dialect.name)
            .values(webhook_id=event.webhook_id, received_at=now)
            .on_conflict_do_nothing(index_elements=["webhook_id"])
            .returning(webhook_receipts.c.webhook_id)).first()
        if fresh is None:
            logger.info("webhook.duplicate", extra={"webhook_id": event.webhook_id})
            return {"status": "duplicate"}
        if event.type == INSTALL:
            _install(conn, event, now)
            logger.info("webhook.install", extra={
                "target_type": event.target_type, "target_id": event.target_id,
                "company_id": event.company_id, "locations": len(event.location_ids)})
            return {"status": INSTALLED}
        removed, parked = _uninstall(conn, event, now)
        logger.info("webhook.uninstall", extra={
            "target_type": event.target_type, "target_id": event.target_id,
            "tokens_removed": removed, "views_parked": parked})
        return {"status": UNINSTALLED}


def _install(conn: sa.Connection, event: AppEvent, now: dt.datetime) -> None:
    upsert_install(conn, event.target_type, event.target_id, event.company_id, INSTALLED, now)
    for location_id in event.location_ids:
        upsert_install(conn, LOCATION, location_id, event.company_id, INSTALLED, now)


def _uninstall(conn: sa.Connection, event: AppEvent, now: dt.datetime) -> tuple[int, int]:
    """Remove the tokens, park the views and mark the install gone; return (tokens, views)."""
    i, d = installs.c, documents.c
    if event.target_type == LOCATION:
        targets = d.location_id == event.target_id
        tokens = locations.c.location_id == event.target_id
    else:
        # The agency's own token (stored under its company id) and every location whose
        # install row names the agency; a subquery, however many locations it has.
        members = sa.select(i.target_id).where(i.target_type == LOCATION,
                                               i.company_id == event.target_id)
        targets = sa.or_(d.location_id == event.target_id, d.location_id.in_(members))
        tokens = sa.or_(locations.c.location_id == event.target_id,
                        locations.c.location_id.in_(members))
    removed = conn.execute(locations.delete().where(tokens)).rowcount
    # As Store.block_location, in this transaction: a row leased to a forwarder finishes
    # its send, and without a token it is parked when it comes round again.
    parked = conn.execute(
        documents.update().where(targets, d.status == PENDING)
        .where(sa.or_(d.locked_until.is_(None), d.locked_until <= now))
        .values(status=BLOCKED, updated_at=now)).rowcount
    if event.target_type == COMPANY:
        conn.execute(installs.update().where(i.target_type == LOCATION,
                                             i.company_id == event.target_id)
                     .values(status=UNINSTALLED, updated_at=now))
    upsert_install(conn, event.target_type, event.target_id, event.company_id, UNINSTALLED,
                    now)
    return removed, parked


def upsert_install(conn: sa.Connection, target_type: str, target_id: str,
                    company_id: str | None, status: str, now: dt.datetime) -> None:
    changes = {"status": status, "updated_at": now}
    if company_id is not None:  # an UNINSTALL often omits it: keep what INSTALL said
        changes["company_id"] = company_id
    conn.execute(
        dialect_insert(installs, conn.dialect.name)
        .values(target_type=target_type, target_id=target_id, company_id=company_id,
                status=status, updated_at=now)
        .on_conflict_do_update(index_elements=["target_type", "target_id"], set_=changes))


def _published_rsa_key() -> rsa.RSAPublicKey:
    key = serialization.load_pem_public_key(HIGHLEVEL_RSA_PUBLIC_KEY)
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def _b64(value: str) -> bytes:
    try:
        return base64.b64decode(value.strip(), validate=True)
    except binascii.Error:
        raise ValueError("not base64") from None


def _timestamp(value: Any) -> dt.datetime:
    if not isinstance(value, str):
        raise MalformedError("timestamp is missing")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise MalformedError("timestamp is not an ISO 8601 time") from None
    # HighLevel sends UTC with a Z; a time without an offset is read as UTC too.
    return parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed


def _optional_id(payload: dict, name: str) -> str | None:
    value = payload.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _ID.match(value):
        raise MalformedError(f"{name} must be 1-64 characters of A-Z a-z 0-9 _ -")
    return value


def _clip(value: Any) -> str | None:
    """A payload value fit for a log field (JSON-escaped there; short here)."""
    return None if value is None else str(value)[:100]
