"""Mailgun's webhook signature: HMAC-SHA256 hex over ``timestamp + token`` with the webhook
signing key; a token is accepted once.

https://documentation.mailgun.com/docs/mailgun/user-manual/webhooks/securing-webhooks
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Mapping

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from ...store.db import used_webhook_tokens
from .common import SignatureError, check_age, unix_seconds


class MailgunVerifier:
    """Mailgun's webhook signature: HMAC-SHA256 of ``timestamp + token``, in the body.

    The signature covers the timestamp and token only, not the event, so a captured
    signature could carry a forged event: each token is accepted once (``UsedTokens``).
    """

    def __init__(self, signing_key: str, *, tolerance: float):
        if not signing_key.strip():
            raise ValueError("the signing key is empty")
        self.key = signing_key.strip().encode()
        self.tolerance = tolerance

    def verify(self, signature: object, *, now: dt.datetime) -> str:
        """Check the body's ``signature`` object; return its token (to be claimed once).

        A subaccount's event also carries ``parent-signature``, made with the primary
        account's key: either one matching is enough.

        :raises SignatureError: missing fields, no match, or a stale timestamp.
        """
        if not isinstance(signature, Mapping):
            raise SignatureError("Missing the signature object")
        token, timestamp = signature.get("token"), signature.get("timestamp")
        if not isinstance(token, str) or not token or isinstance(timestamp, bool) or \
                not isinstance(timestamp, str | int):
            raise SignatureError("The signature lacks its token or timestamp")
        timestamp = str(timestamp)
        expected = hmac.new(self.key, (timestamp + token).encode(), hashlib.sha256).hexdigest()
        found = False
        for field in ("signature", "parent-signature"):
            presented = signature.get(field)
            if isinstance(presented, str):
                found |= hmac.compare_digest(expected.encode(), presented.lower().encode())
        if not found:
            raise SignatureError("The signature does not match")
        check_age(unix_seconds(timestamp), now, max_age=self.tolerance,
                  max_ahead=self.tolerance)
        return token


# Every row is kept at least this long, whatever ``keep_seconds`` says: the table also holds
# the OAuth install's states (service/oauth_api.py: valid 10 minutes, plus 5 for machines'
# clocks that disagree), and each claim prunes every row, not only its own source's (the
# rows are hashes: their source is unknown).
MIN_KEEP_SECONDS = 900


class UsedTokens:
    """Single-use tokens already accepted (``used_webhook_tokens``): Mailgun's signature
    tokens and the OAuth install's states, remembered long enough that a replay is either
    refused here or stale anyway. One instance per app serves every source, so the table
    has one pruning rule."""

    def __init__(self, engine: Engine, *, keep_seconds: float):
        self.engine = engine
        self.keep = dt.timedelta(seconds=max(keep_seconds, MIN_KEEP_SECONDS))

    @staticmethod
    def _digest(source: str, token: str) -> str:
        return hashlib.sha256(f"{source}:{token}".encode()).hexdigest()

    def claim(self, source: str, token: str, *, now: dt.datetime) -> bool:
        """Record ``token`` as used; False if it was already (a replay)."""
        t = used_webhook_tokens
        try:
            with self.engine.begin() as conn:
                conn.execute(t.delete().where(t.c.seen_at < now - self.keep))
                conn.execute(t.insert().values(token=self._digest(source, token), seen_at=now))
        except IntegrityError:
            return False
        return True

    def release(self, source: str, token: str) -> None:
        """Forget a claimed token whose event could not be stored, so a retry is accepted."""
        t = used_webhook_tokens
        with self.engine.begin() as conn:
            conn.execute(t.delete().where(t.c.token == self._digest(source, token)))
