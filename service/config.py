"""Every setting the service reads, in one inventory (DESIGN.md, "Configuration").

``load_config(environ)`` is the only place that reads environment variables.
Tests pass a plain dict to ``create_app`` instead.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.fernet import Fernet


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names it."""


def _csv(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _int(value: str) -> int:
    return int(value)


def _choice(*allowed: str) -> Callable[[str], str]:
    def coerce(value: str) -> str:
        value = value.strip().lower()
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return value

    return coerce


def _rate(value: str) -> tuple[int, float]:
    """Parse ``100/10s`` into (requests, seconds)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*", value)
    if not match:
        raise ValueError("expected N/<interval>, e.g. 100/10s")
    count, amount, unit = int(match[1]), float(match[2]), match[3] or "s"
    seconds = amount / 1000 if unit == "ms" else amount * 60 if unit == "m" else amount
    return count, seconds


def normalize_database_url(url: str) -> str:
    """Accept the URL forms users paste and pick the psycopg 3 driver for PostgreSQL."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _listen(value: str) -> tuple[str, int]:
    """Parse ``[host:]port``; without a host, every interface."""
    host, _, port = value.strip().rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected [host:]port, e.g. 9102 or 127.0.0.1:9102")
    return host.strip("[]") or "0.0.0.0", int(port)


def _base_url(value: str) -> str:
    parts = urlsplit(value.strip())
    loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise ValueError("must be https (plain http only for loopback)")
    return value.strip().rstrip("/")


@dataclass(frozen=True)
class Setting:
    name: str
    coerce: Callable[[str], Any]
    default: str | None
    help: str
    secret: bool = False


DEV_PUBLIC_BASE_URL = "http://localhost:8000"
# A bearer key shorter than this is refused in production: 32 characters of a generated key
# (``keys generate`` makes 35) are about 190 bits.
MIN_API_KEY_LENGTH = 32

# name, coercer, default (a string, coerced like the environment), meaning
SETTINGS = [
    Setting("RELAY_ENV", _choice("development", "production", "test"), "development",
            "production refuses to start without explicit secrets"),
    Setting("DATABASE_URL", normalize_database_url, "sqlite:///instance/relay.db",
            "SQLAlchemy URL; postgres:// and postgresql:// are accepted"),
    Setting("HIGHLEVEL_BASE_URL", _base_url, "https://services.leadconnectorhq.com",
            "HighLevel API base; plain http only for loopback"),
    Setting("HIGHLEVEL_API_VERSION", str, "2021-07-28", "the Version header"),
    Setting("HIGHLEVEL_CLIENT_ID", str, None, "OAuth app client id"),
    Setting("HIGHLEVEL_CLIENT_SECRET", str, None, "OAuth app client secret", secret=True),
    Setting("HIGHLEVEL_WEBHOOK_PUBLIC_KEY", str, None, "Ed25519 key for app webhooks"),
    Setting("HIGHLEVEL_TIMEOUT_SECONDS", float, "10", "read timeout of each HighLevel call"),
    Setting("HIGHLEVEL_OAUTH_SCOPES", str, "invoices.write invoices/estimate.write",
            "scopes the app asks for at install"),
    Setting("HIGHLEVEL_MARKETPLACE_URL", _base_url, "https://marketplace.gohighlevel.com",
            "where installs choose a location"),
    Setting("OAUTH_REDIRECT_URI", str, None, "default: PUBLIC_BASE_URL/oauth/callback"),
    Setting("TOKEN_REFRESH_MARGIN_SECONDS", _int, "300", "refresh OAuth tokens this early"),
    Setting("INGEST_API_KEYS", _csv, None, "bearer keys for event ingest", secret=True),
    Setting("ADMIN_API_KEYS", _csv, None, "bearer keys for admin routes", secret=True),
    Setting("PIXEL_SIGNING_KEYS", _csv, None, "pixel token keys; first signs", secret=True),
    Setting("TOKEN_ENCRYPTION_KEYS", _csv, None, "Fernet keys; first encrypts", secret=True),
    Setting("PUBLIC_BASE_URL", str, None,
            f"base of minted pixel URLs; required in production (else {DEV_PUBLIC_BASE_URL})"),
    Setting("COALESCE_WINDOW_SECONDS", _int, "60", "at most one more send per window"),
    Setting("MAX_EVENT_AGE_SECONDS", _int, "86400", "retry until a view is this old"),
    Setting("FORWARD_CONCURRENCY", _int, "16", "sends in flight per forwarder"),
    Setting("LEASE_SECONDS", _int, "120", "how long a claim is held before others retry it"),
    Setting("MACHINE_OPENS", _choice("skip", "forward"), "skip", "forward machine opens?"),
    Setting("MACHINE_OPEN_RULES", str, None, "extra machine-open rules file"),
    # Email providers as sources (service/sources_api.py); a source left unset answers 503.
    Setting("SENDGRID_WEBHOOK_PUBLIC_KEY", str, None, "SendGrid signed Event Webhook key"),
    Setting("MAILGUN_SIGNING_KEY", str, None, "Mailgun webhook signing key", secret=True),
    Setting("POSTMARK_WEBHOOK_CREDENTIALS", str, None, "user:password in Postmark's webhook URL",
            secret=True),
    Setting("SES_TOPIC_ARNS", _csv, None, "SNS topics allowed to deliver SES open events"),
    Setting("INTERNAL_WEBHOOK_SECRETS", _csv, None, "Standard Webhooks whsec_ secrets",
            secret=True),
    Setting("SOURCE_SIGNATURE_TOLERANCE_SECONDS", _int, "600",
            "max age of a SendGrid or Mailgun signature"),
    Setting("RATE_LIMIT_BURST", _rate, "100/10s", "starting burst limit per resource"),
    Setting("RATE_LIMIT_DAILY", _int, "200000", "starting daily limit per resource"),
    Setting("DELIVERY_LOG_DAYS", _int, "30", "delivery-log retention"),
    Setting("EVENT_RETENTION_DAYS", _int, "30",
            "events of delivered or dead documents are pruned after this many days"),
    Setting("RETAIN_CLIENT_IP", _choice("truncate", "full", "none"), "truncate",
            "client address stored: truncate (IPv4 /24, IPv6 /48), full or none"),
    Setting("MAX_CONTENT_LENGTH", _int, str(1024 * 1024), "largest request body, bytes"),
    Setting("PORT", _int, "8000", "web port"),
    Setting("WEB_CONCURRENCY", _int, str(2 * (os.cpu_count() or 1)), "gunicorn workers"),
    Setting("TRUSTED_PROXIES", _int, "0", "proxies in front that set X-Forwarded-*"),
    Setting("LOG_LEVEL", str.upper, "INFO", "logging level"),
    Setting("LOG_FORMAT", _choice("json", "text"), None, "json in production, text in dev"),
    Setting("FORWARDER_METRICS_PORT", _listen, None,
            "[host:]port where a forwarder serves its Prometheus metrics; unset: off"),
]

SECRET_NAMES = [s.name for s in SETTINGS if s.secret and s.name.endswith("_KEYS")]
DEV_SECRETS_FILE = "dev-secrets.json"


def load_config(environ: Mapping[str, str], overrides: Mapping[str, Any] | None = None,
                *, instance_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Build the typed config from ``environ`` with ``overrides`` (already typed) on top.

    :raises ConfigError: a value does not parse, or production lacks a secret.
    """
    overrides = dict(overrides or {})
    config: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.name in overrides:
            config[setting.name] = overrides.pop(setting.name)
            continue
        raw = environ.get(setting.name)
        if raw is None or raw == "":
            raw = setting.default
        if raw is None:
            config[setting.name] = None
            continue
        try:
            config[setting.name] = setting.coerce(raw)
        except ValueError as exc:
            raise ConfigError(f"{setting.name}: {exc}") from None
    config.update(overrides)  # extra keys tests pass (e.g. TESTING)
    if isinstance(config["DATABASE_URL"], str):
        config["DATABASE_URL"] = normalize_database_url(config["DATABASE_URL"])
    if config["LOG_FORMAT"] is None:
        config["LOG_FORMAT"] = "json" if config["RELAY_ENV"] == "production" else "text"

    missing = [name for name in SECRET_NAMES if not config.get(name)]
    if missing and config["RELAY_ENV"] == "production":
        raise ConfigError(
            "RELAY_ENV=production needs explicit secrets; missing: " + ", ".join(missing)
        )
    if missing:
        generated = ensure_dev_secrets(Path(instance_path or "instance"))
        for name in missing:
            config[name] = generated[name]
    if config["RELAY_ENV"] == "production":
        problems = production_problems(config)
        if problems:
            raise ConfigError("RELAY_ENV=production refuses to start: " + "; ".join(problems))
    elif not config["PUBLIC_BASE_URL"]:
        config["PUBLIC_BASE_URL"] = DEV_PUBLIC_BASE_URL
    for key in config["TOKEN_ENCRYPTION_KEYS"]:
        try:
            Fernet(key)
        except ValueError:
            raise ConfigError(
                "TOKEN_ENCRYPTION_KEYS: each key must be a Fernet key "
                "(generate one with `flask --app service keys generate`)"
            ) from None
    return config


def production_problems(config: Mapping[str, Any]) -> list[str]:
    """What production refuses in settings that parse: each names its setting, never a value."""
    problems = []
    for name in ("INGEST_API_KEYS", "ADMIN_API_KEYS"):
        short = [str(n) for n, key in enumerate(config[name], 1) if len(key) < MIN_API_KEY_LENGTH]
        if short:
            problems.append(f"{name}: each key must be at least {MIN_API_KEY_LENGTH} characters "
                            f"(key {', '.join(short)} is shorter)")
    if set(config["INGEST_API_KEYS"]) & set(config["ADMIN_API_KEYS"]):
        problems.append("INGEST_API_KEYS and ADMIN_API_KEYS share a key: an ingest key must "
                        "not also be an admin key")
    if not config["PUBLIC_BASE_URL"]:
        problems.append("PUBLIC_BASE_URL is not set: it is the base of every minted pixel URL")
    if config["HIGHLEVEL_WEBHOOK_PUBLIC_KEY"] and not config["HIGHLEVEL_CLIENT_ID"]:
        # The webhook key (and HighLevel's published RSA key) sign every app's events: only
        # the client id tells ours apart (service/webhooks.py).
        problems.append("HIGHLEVEL_WEBHOOK_PUBLIC_KEY is set without HIGHLEVEL_CLIENT_ID: "
                        "INSTALL and UNINSTALL events of every app would be applied")
    return problems


def generate_secrets() -> dict[str, list[str]]:
    """Make one fresh value for each secret key list."""
    return {
        "INGEST_API_KEYS": ["ik_" + secrets.token_urlsafe(24)],
        "ADMIN_API_KEYS": ["ak_" + secrets.token_urlsafe(24)],
        "PIXEL_SIGNING_KEYS": [secrets.token_urlsafe(32)],
        "TOKEN_ENCRYPTION_KEYS": [Fernet.generate_key().decode()],
    }


def ensure_dev_secrets(instance: Path) -> dict[str, list[str]]:
    """Load development secrets from ``instance/``, generating them once (mode 0600)."""
    path = instance / DEV_SECRETS_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        pass
    instance.mkdir(parents=True, exist_ok=True)
    values = generate_secrets()
    try:
        # O_EXCL: when several gunicorn workers start at once, exactly one writes.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_when_complete(path)
    with os.fdopen(fd, "w") as fh:
        json.dump(values, fh, indent=2)
    # Printed once, so a newcomer can call the API; never logged.
    print(
        f"Generated development keys in {path}:\n"
        f"  INGEST_API_KEYS={values['INGEST_API_KEYS'][0]}\n"
        f"  ADMIN_API_KEYS={values['ADMIN_API_KEYS'][0]}",
        file=sys.stderr,
    )
    return values


def _read_when_complete(path: Path) -> dict[str, list[str]]:
    import time

    for _ in range(50):
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            time.sleep(0.02)  # another process is still writing it
    raise ConfigError(f"{path} is not valid JSON; delete it to regenerate development keys")
