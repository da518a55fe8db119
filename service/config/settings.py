"""The inventory: every environment variable the service reads, one line each."""

from __future__ import annotations

import os
from dataclasses import dataclass

import marshmallow as ma

from .fields import (
    BaseUrl,
    Choice,
    CommaList,
    DatabaseUrl,
    Float,
    Int,
    Listen,
    Origins,
    Rate,
    Str,
    Upper,
    WebhookSecret,
    WebhookUrls,
)


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names it."""



@dataclass(frozen=True)
class Setting:
    """One environment variable: its parser, its default (a string, parsed like the
    environment's; None: unset) and what it means."""

    name: str
    field: ma.fields.Field
    default: str | None
    help: str
    secret: bool = False
    server: bool = False  # gunicorn's master reads it too (load_server_config)


# Outside production an unset PUBLIC_BASE_URL follows PORT, so minted pixel URLs point at
# the port the relay listens on (load_config fills in the port).
DEV_PUBLIC_BASE_URL = "http://localhost:{port}"
# A bearer key shorter than this is refused in production: 32 characters of a generated key
# (``keys generate`` makes 35) are about 190 bits.
MIN_API_KEY_LENGTH = 32

# name, parser, default (a string, parsed like the environment's), meaning
SETTINGS = [
    Setting("RELAY_ENV", Choice("development", "production", "test"), "development",
            "production refuses to start without explicit secrets", server=True),
    Setting("DATABASE_URL", DatabaseUrl(), "sqlite:///instance/relay.db",
            "SQLAlchemy URL; postgres:// and postgresql:// are accepted"),
    Setting("HIGHLEVEL_BASE_URL", BaseUrl(), "https://services.leadconnectorhq.com",
            "HighLevel API base; plain http only for loopback"),
    Setting("HIGHLEVEL_API_VERSION", Str(), "2021-07-28", "the Version header"),
    Setting("HIGHLEVEL_CLIENT_ID", Str(), None, "OAuth app client id"),
    Setting("HIGHLEVEL_CLIENT_SECRET", Str(), None, "OAuth app client secret", secret=True),
    Setting("HIGHLEVEL_WEBHOOK_PUBLIC_KEY", Str(), None, "Ed25519 key for app webhooks"),
    Setting("HIGHLEVEL_TIMEOUT_SECONDS", Float(), "10", "read timeout of each HighLevel call"),
    Setting("HIGHLEVEL_OAUTH_SCOPES", Str(), "invoices.write invoices/estimate.write",
            "scopes the app asks for at install"),
    Setting("HIGHLEVEL_MARKETPLACE_URL", BaseUrl(), "https://marketplace.gohighlevel.com",
            "where installs choose a location"),
    Setting("OAUTH_REDIRECT_URI", Str(), None, "default: PUBLIC_BASE_URL/oauth/callback"),
    Setting("TOKEN_REFRESH_MARGIN_SECONDS", Int(), "300", "refresh OAuth tokens this early"),
    Setting("INGEST_API_KEYS", CommaList(), None, "bearer keys for event ingest", secret=True),
    Setting("ADMIN_API_KEYS", CommaList(), None, "bearer keys for admin routes", secret=True),
    Setting("PIXEL_SIGNING_KEYS", CommaList(), None, "pixel token keys; first signs",
            secret=True),
    Setting("TOKEN_ENCRYPTION_KEYS", CommaList(), None, "Fernet keys; first encrypts",
            secret=True),
    Setting("SESSION_SECRET_KEYS", CommaList(), None,
            "console session cookie keys; first signs", secret=True),
    Setting("PUBLIC_BASE_URL", Str(), None,
            "base of minted pixel URLs; required in production (else http://localhost:PORT)"),
    Setting("COALESCE_WINDOW_SECONDS", Int(), "60", "at most one more send per window"),
    Setting("MAX_EVENT_AGE_SECONDS", Int(), "86400", "retry until a view is this old"),
    Setting("FORWARD_CONCURRENCY", Int(), "16", "sends in flight per forwarder"),
    # Renewed every LEASE_SECONDS/3 while the send is in flight (service/forward/leases.py):
    # a dead forwarder's documents come due again at most this long after its last renewal.
    Setting("LEASE_SECONDS", Int(validate=ma.validate.Range(min=3)), "15",
            "how long a claim is held, unless its forwarder renews it, before others take it"),
    Setting("MACHINE_OPENS", Choice("skip", "forward"), "skip", "forward machine opens?"),
    Setting("MACHINE_OPEN_RULES", Str(), None, "extra machine-open rules file"),
    # Email providers as sources (service/sources_api.py); a source left unset answers 503.
    Setting("SENDGRID_WEBHOOK_PUBLIC_KEY", Str(), None, "SendGrid signed Event Webhook key"),
    Setting("MAILGUN_SIGNING_KEY", Str(), None, "Mailgun webhook signing key", secret=True),
    Setting("POSTMARK_WEBHOOK_CREDENTIALS", Str(), None,
            "user:password in Postmark's webhook URL", secret=True),
    Setting("SES_TOPIC_ARNS", CommaList(), None,
            "SNS topics allowed to deliver SES open events"),
    Setting("INTERNAL_WEBHOOK_SECRETS", CommaList(), None, "Standard Webhooks whsec_ secrets",
            secret=True),
    Setting("SOURCE_SIGNATURE_TOLERANCE_SECONDS", Int(), "600",
            "max age of a SendGrid or Mailgun signature"),
    Setting("RATE_LIMIT_BURST", Rate(), "100/10s", "starting burst limit per resource"),
    Setting("RATE_LIMIT_DAILY", Int(), "200000", "starting daily limit per resource"),
    Setting("DELIVERY_LOG_DAYS", Int(), "30", "delivery-log retention"),
    Setting("EVENT_RETENTION_DAYS", Int(), "30",
            "events of delivered or dead documents are pruned after this many days"),
    Setting("RETAIN_CLIENT_IP", Choice("truncate", "full", "none"), "truncate",
            "client address stored: truncate (IPv4 /24, IPv6 /48), full or none"),
    # Operator notifications (service/forward/notify.py): Standard Webhooks-signed POSTs.
    Setting("OPERATOR_WEBHOOK_URLS", WebhookUrls(), None,
            "http(s) URLs told when a token turns invalid, views go dead or wait without a "
            "token; unset: off"),
    Setting("OPERATOR_WEBHOOK_SECRET", WebhookSecret(), None,
            "whsec_ secret signing them; required with OPERATOR_WEBHOOK_URLS", secret=True),
    Setting("NO_TOKEN_ALERT_MINUTES", Int(validate=ma.validate.Range(min=1)), "60",
            "tell operators when views have waited this long without a usable token"),
    Setting("BEACON_ALLOWED_ORIGINS", Origins(), "*",
            "origins whose pages may POST the beacon (CORS): * or a comma list"),
    Setting("MAX_CONTENT_LENGTH", Int(), str(1024 * 1024), "largest request body, bytes"),
    # The web server's (config/gunicorn.conf.py reads these through load_server_config).
    Setting("HOST", Str(), "127.0.0.1", "address gunicorn binds (0.0.0.0: every interface)",
            server=True),
    Setting("PORT", Int(), "8000", "web port", server=True),
    Setting("WEB_CONCURRENCY", Int(), str(2 * (os.cpu_count() or 1)), "gunicorn workers",
            server=True),
    Setting("GUNICORN_THREADS", Int(), "16", "threads per gunicorn worker", server=True),
    Setting("GUNICORN_TIMEOUT", Int(), "30", "a worker silent this long is restarted",
            server=True),
    Setting("GUNICORN_GRACEFUL_TIMEOUT", Int(), "25", "on SIGTERM, finish in-flight requests",
            server=True),
    Setting("GUNICORN_MAX_REQUESTS", Int(), "0", "recycle a worker after this many; 0: never",
            server=True),
    Setting("TRUSTED_PROXIES", Int(), "0", "proxies in front that set X-Forwarded-*",
            server=True),
    Setting("LOG_LEVEL", Upper(), "INFO", "logging level", server=True),
    Setting("LOG_FORMAT", Choice("json", "text"), None, "json in production, text in dev",
            server=True),
    Setting("FORWARDER_METRICS_PORT", Listen(), None,
            "[host:]port where a forwarder serves its Prometheus metrics; unset: off"),
]

SECRET_NAMES = [s.name for s in SETTINGS if s.secret and s.name.endswith("_KEYS")]
