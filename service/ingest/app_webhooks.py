"""HighLevel app webhooks (INSTALL, UNINSTALL): verify and parse, then apply. No Flask here.

HighLevel signs each webhook over the raw request body:

- ``x-ghl-signature``: Ed25519, base64 (the current scheme). The key is the operator's
  ``HIGHLEVEL_WEBHOOK_PUBLIC_KEY``, as PEM or as the base64 of its 32 raw bytes.
- ``x-wh-signature``: RSA PKCS#1 v1.5 with SHA-256, base64 (the legacy scheme), checked
  against the 4096-bit key HighLevel publishes in its docs (``HIGHLEVEL_RSA_PUBLIC_KEY``).
  Only read when there is no ``x-ghl-signature``: when both come, Ed25519 alone decides,
  as in HighLevel's own SDK.

The keys are loaded in service/webhook_keys.py; what a verified event does to the store
(one transaction with its receipt) is service/app_installs.py.

https://marketplace.gohighlevel.com/docs/webhook/WebhookIntegrationGuide (signature, key,
retries); https://marketplace.gohighlevel.com/docs/oauth/WebhookAuthentication (replay:
``timestamp`` within 5 minutes, reject repeated ``webhookId``);
https://marketplace.gohighlevel.com/docs/webhook/AppInstall and ``.../AppUninstall``
(payloads); GoHighLevel/highlevel-api-python ``webhook/webhook_manager.py`` and
GoHighLevel/highlevel-api-sdk ``lib/webhook/webhook-manager.ts`` (both headers, which
fields arrive: ``installType``, ``versionId``, ``locationIds`` for bulk installs; the app id
is the client id's part before ``-``).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import logging
import re
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.engine import Engine

from .. import safejson
from ..highlevel.webhook_keys import SETTING, load_public_key, published_rsa_key
from ..ids import ID_RULE, is_valid_id
from ..store.installs import COMPANY, INSTALL, LOCATION, UNINSTALL, AppEvent, apply

logger = logging.getLogger(__name__)

# HighLevel's guide: accept a timestamp within 5 minutes (either way: clocks drift).
TOLERANCE = dt.timedelta(minutes=5)
_WEBHOOK_ID = re.compile(r"^[\x21-\x7e]{1,100}$")  # fits webhook_receipts.webhook_id


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


class WebhookReceiver:
    """Verifies HighLevel app webhooks and applies INSTALL / UNINSTALL to the store."""

    def __init__(self, public_key: Ed25519PublicKey, *, app_id: str | None = None,
                 rsa_key: rsa.RSAPublicKey | None = None):
        self.public_key = public_key
        # None: accept every app's events (no HIGHLEVEL_CLIENT_ID to compare with).
        self.app_id = app_id
        self.rsa_key = rsa_key or published_rsa_key()

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

    :raises MalformedError: not UTF-8 JSON (or nested too deep: ``safejson``), or not an
        object.
    """
    try:
        payload = safejson.loads(body)
    except ValueError as exc:
        raise MalformedError(str(exc)) from None
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
    if not isinstance(webhook_id, str) or not _WEBHOOK_ID.fullmatch(webhook_id):
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
                is_valid_id(i) for i in covered):
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
    if not is_valid_id(value):
        raise MalformedError(f"{name} must be {ID_RULE}")
    return value


def _clip(value: Any) -> str | None:
    """A payload value fit for a log field (JSON-escaped there; short here)."""
    return None if value is None else str(value)[:100]
