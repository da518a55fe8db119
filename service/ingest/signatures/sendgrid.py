"""SendGrid's Signed Event Webhook: ECDSA P-256 / SHA-256 over ``timestamp + raw body``.

https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/getting-started-event-webhook-security-features
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .common import SignatureError, b64decode, check_age, unix_seconds


class SendGridVerifier:
    """SendGrid's Signed Event Webhook: ECDSA P-256 over the timestamp header and the body."""

    SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
    TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"

    def __init__(self, public_key: str, *, tolerance: float):
        """``public_key``: the verification key from SendGrid's Mail Settings (base64 DER), or PEM.

        :raises ValueError: it is not an EC P-256 public key.
        """
        text = public_key.strip()
        try:
            if text.startswith("-----BEGIN"):
                key = serialization.load_pem_public_key(text.encode())
            else:
                key = serialization.load_der_public_key(base64.b64decode(text, validate=True))
        except (ValueError, binascii.Error, TypeError) as exc:
            raise ValueError(f"not a public key (base64 DER or PEM): {exc}") from None
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise ValueError("not an ECDSA P-256 public key")
        self.key = key
        self.tolerance = tolerance

    def verify(self, body: bytes, *, signature: str | None, timestamp: str | None,
               now: dt.datetime) -> None:
        """Check the headers against the raw body.

        :raises SignatureError: a header is missing, the signature does not match, or the
            timestamp is more than ``tolerance`` seconds from ``now``.
        """
        if not signature or not timestamp:
            raise SignatureError(f"Missing {self.SIGNATURE_HEADER} or {self.TIMESTAMP_HEADER}")
        seconds = unix_seconds(timestamp)
        try:
            self.key.verify(b64decode(signature.strip()), timestamp.encode() + body,
                            ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise SignatureError("The signature does not match the body") from None
        check_age(seconds, now, max_age=self.tolerance, max_ahead=self.tolerance)
