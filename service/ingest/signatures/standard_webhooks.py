"""Internal services' signatures: Standard Webhooks (https://www.standardwebhooks.com/)."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hmac
from collections.abc import Mapping

from standardwebhooks import Webhook

from .common import SignatureError, check_age, unix_seconds

# Standard Webhooks' tolerance, fixed by its spec (and by the package's own verify).
STANDARD_WEBHOOKS_TOLERANCE = 300


class StandardWebhookVerifier:
    """Standard Webhooks signatures, any of several secrets (``whsec_...``) while one rotates.

    The ``standardwebhooks`` package decodes the secrets and computes each signature
    (``Webhook.sign``). Its own ``verify`` is not used: it reads the wall clock (this
    service's clock is injected), and a malformed ``webhook-signature`` or a non-UTF-8 body
    makes it raise ``ValueError`` instead of its verification error.
    """

    def __init__(self, secrets: list[str], *, tolerance: float = STANDARD_WEBHOOKS_TOLERANCE):
        if not secrets:
            raise ValueError("no secrets")
        try:
            self.webhooks = [Webhook(secret) for secret in secrets]
        except Exception as exc:  # binascii.Error, or the package's empty-secret error
            raise ValueError(f"each secret must be whsec_ followed by base64 ({exc})") from None
        self.tolerance = tolerance

    def verify(self, body: bytes, headers: Mapping[str, str], *, now: dt.datetime) -> str:
        """Check ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature``; return the id.

        :raises SignatureError: a header missing, no ``v1`` signature matching any secret,
            or a timestamp more than 5 minutes from ``now``.
        """
        msg_id = headers.get("webhook-id")
        timestamp = headers.get("webhook-timestamp")
        presented = headers.get("webhook-signature")
        if not (msg_id and timestamp and presented):
            raise SignatureError("Missing webhook-id, webhook-timestamp or webhook-signature")
        if not (timestamp.isascii() and timestamp.isdigit()):
            raise SignatureError("webhook-timestamp is not a Unix time")
        seconds = unix_seconds(timestamp)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise SignatureError("The signature does not match the body") from None
        signed_at = dt.datetime.fromtimestamp(seconds, dt.UTC)
        expected = [base64.b64decode(wh.sign(msg_id, signed_at, text).partition(",")[2])
                    for wh in self.webhooks]
        found = False
        for entry in presented.split():
            version, _, value = entry.partition(",")
            if version != "v1":
                continue
            try:
                candidate = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                continue
            for digest in expected:
                found |= hmac.compare_digest(digest, candidate)
        if not found:
            raise SignatureError("No webhook-signature matches")
        check_age(seconds, now, max_age=self.tolerance, max_ahead=self.tolerance)
        return msg_id
