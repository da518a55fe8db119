"""Postmark signs nothing: HTTP Basic credentials in the webhook URL are the only proof.

https://postmarkapp.com/developer/webhooks/webhooks-overview
"""

from __future__ import annotations

import base64
import binascii
import hmac

from .common import SignatureError


class BasicCredentials:
    """HTTP Basic credentials that Postmark sends from the webhook URL (``user:password@``)."""

    def __init__(self, credentials: str):
        user, sep, password = credentials.partition(":")
        if not sep or not user or not password:
            raise ValueError("expected user:password")
        self.expected = credentials.encode()

    def verify(self, authorization: str | None) -> None:
        """Check an ``Authorization: Basic ...`` header in constant time.

        :raises SignatureError: missing, malformed or wrong credentials.
        """
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() != "basic":
            raise SignatureError("Missing HTTP Basic credentials")
        try:
            presented = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise SignatureError("Malformed HTTP Basic credentials") from None
        if not hmac.compare_digest(presented, self.expected):
            raise SignatureError("Wrong HTTP Basic credentials")
