"""Which email sources are configured: one verifier per source, built from its setting.

A source whose setting is unset has no verifier (its route answers 503 naming the setting);
a setting that is set but malformed stops start-up with a ``ConfigError`` naming it.
No Flask here: service/sources_api.py keeps one ``Sources`` per app.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import requests

from ..config import ConfigError
from .signatures import (
    BasicCredentials,
    CertificateFetcher,
    MailgunVerifier,
    SendGridVerifier,
    SnsVerifier,
    StandardWebhookVerifier,
    UsedTokens,
    http_download,
)

SETTINGS = {"sendgrid": "SENDGRID_WEBHOOK_PUBLIC_KEY", "mailgun": "MAILGUN_SIGNING_KEY",
            "postmark": "POSTMARK_WEBHOOK_CREDENTIALS", "ses": "SES_TOPIC_ARNS",
            "internal": "INTERNAL_WEBHOOK_SECRETS"}


@dataclass
class Sources:
    """The per-app verifiers (None: the source is not configured) and counters."""

    sendgrid: SendGridVerifier | None = None
    mailgun: MailgunVerifier | None = None
    postmark: BasicCredentials | None = None
    ses: SnsVerifier | None = None
    internal: StandardWebhookVerifier | None = None
    tokens: UsedTokens | None = None
    unroutable: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], engine) -> Sources:
        """Build the configured verifiers.

        :raises ConfigError: a configured value is malformed (the message names it).
        """
        tolerance = config["SOURCE_SIGNATURE_TOLERANCE_SECONDS"]
        builders = {
            "sendgrid": lambda v: SendGridVerifier(v, tolerance=tolerance),
            "mailgun": lambda v: MailgunVerifier(v, tolerance=tolerance),
            "postmark": BasicCredentials,
            "ses": lambda v: SnsVerifier(v, CertificateFetcher(
                http_download(requests.Session()))),
            "internal": StandardWebhookVerifier,
        }
        built = {}
        for name, build in builders.items():
            value = config.get(SETTINGS[name])
            if not value:
                continue
            try:
                built[name] = build(value)
            except ValueError as exc:
                raise ConfigError(f"{SETTINGS[name]}: {exc}") from None
        # A token is refused for its timestamp's lifetime (tolerance either way) afterwards.
        return cls(**built, tokens=UsedTokens(engine, keep_seconds=2 * tolerance + 60))

    def count_unroutable(self, provider: str) -> int:
        """Count one open without our ids from ``provider``; return its running total."""
        with self.lock:
            self.unroutable[provider] += 1
            return self.unroutable[provider]
