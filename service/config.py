"""Every setting the service reads, in one inventory (DESIGN.md, "Configuration").

``load_config(environ)`` is the only place that reads the app's environment variables, and
``load_server_config(environ)`` reads the few gunicorn's master needs. Tests pass a plain dict.

Each value is parsed by a marshmallow field (marshmallow is already how the API loads its
bodies). The reading itself is ours, not environs': environs reads ``os.environ`` (and its
own copy of a ``.env``) with no public way to hand it a mapping, and here the mapping is the
interface: ``create_app`` passes ``os.environ`` and tests pass a dict. (environs would also
take an empty variable as a value and return a default unparsed; here empty means unset and
a default is parsed like the environment's.) A ``.env`` file is read before this module is
reached, by Flask's CLI (python-dotenv; ``FLASK_SKIP_DOTENV=1`` turns it off) or by honcho
under ``make run``; nothing here reads one.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import marshmallow as ma
from cryptography.fernet import Fernet


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names it."""


# -- parsers: marshmallow fields that take the environment's string ------------------------


class CommaList(ma.fields.Field):
    """``a, b,,c`` -> ``["a", "b", "c"]``: parts are stripped and empty ones dropped."""

    def _deserialize(self, value, attr, data, **kwargs) -> list[str]:
        if not isinstance(value, str):
            raise self.make_error("invalid")
        return [part.strip() for part in value.split(",") if part.strip()]


class Choice(ma.fields.String):
    """One of a few words, compared case-insensitively and returned lower-case."""

    def __init__(self, *allowed: str) -> None:
        super().__init__(validate=ma.validate.OneOf(allowed))

    def _deserialize(self, value, attr, data, **kwargs) -> str:
        return super()._deserialize(value, attr, data, **kwargs).strip().lower()


class Upper(ma.fields.String):
    """A string, upper-cased (``debug`` -> ``DEBUG``)."""

    def _deserialize(self, value, attr, data, **kwargs) -> str:
        return super()._deserialize(value, attr, data, **kwargs).upper()


class Rate(ma.fields.Field):
    """``100/10s`` -> ``(100, 10.0)``: requests per interval, in ms, s (the default) or m."""

    default_error_messages = {"invalid": "expected N/<interval>, e.g. 100/10s"}
    _PATTERN = re.compile(r"\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*")

    def _deserialize(self, value, attr, data, **kwargs) -> tuple[int, float]:
        match = self._PATTERN.fullmatch(value) if isinstance(value, str) else None
        if not match:
            raise self.make_error("invalid")
        count, amount, unit = int(match[1]), float(match[2]), match[3] or "s"
        seconds = amount / 1000 if unit == "ms" else amount * 60 if unit == "m" else amount
        return count, seconds


class Listen(ma.fields.Field):
    """``[host:]port`` -> ``(host, port)``; without a host, every interface."""

    default_error_messages = {"invalid": "expected [host:]port, e.g. 9102 or 127.0.0.1:9102"}

    def _deserialize(self, value, attr, data, **kwargs) -> tuple[str, int]:
        if not isinstance(value, str):
            raise self.make_error("invalid")
        host, _, port = value.strip().rpartition(":")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise self.make_error("invalid")
        return host.strip("[]") or "0.0.0.0", int(port)


class BaseUrl(ma.fields.String):
    """An https URL without its trailing slash; plain http only for loopback (tests, demo)."""

    default_error_messages = {"insecure": "must be https (plain http only for loopback)"}

    def _deserialize(self, value, attr, data, **kwargs) -> str:
        value = super()._deserialize(value, attr, data, **kwargs).strip()
        parts = urlsplit(value)
        loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
        if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
            raise self.make_error("insecure")
        return value.rstrip("/")


def normalize_database_url(url: str) -> str:
    """Accept the URL forms users paste and pick the psycopg 3 driver for PostgreSQL."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


class DatabaseUrl(ma.fields.String):
    """A SQLAlchemy URL, with ``postgres://`` and ``postgresql://`` meaning psycopg 3."""

    def _deserialize(self, value, attr, data, **kwargs) -> str:
        return normalize_database_url(super()._deserialize(value, attr, data, **kwargs))


# The plain ones, short so that the inventory stays one line a setting.
Int, Float, Str = ma.fields.Integer, ma.fields.Float, ma.fields.String


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


DEV_PUBLIC_BASE_URL = "http://localhost:8000"
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
            f"base of minted pixel URLs; required in production (else {DEV_PUBLIC_BASE_URL})"),
    Setting("COALESCE_WINDOW_SECONDS", Int(), "60", "at most one more send per window"),
    Setting("MAX_EVENT_AGE_SECONDS", Int(), "86400", "retry until a view is this old"),
    Setting("FORWARD_CONCURRENCY", Int(), "16", "sends in flight per forwarder"),
    Setting("LEASE_SECONDS", Int(), "120", "how long a claim is held before others retry it"),
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
DEV_SECRETS_FILE = "dev-secrets.json"


def _read(environ: Mapping[str, str], settings: Iterable[Setting],
          overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Parse each setting from ``environ`` (empty counts as unset) or its default; a value in
    ``overrides`` is taken as it is. Every malformed setting is named at once."""
    config: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for setting in settings:
        if setting.name in overrides:
            config[setting.name] = overrides[setting.name]
            continue
        raw = environ.get(setting.name) or setting.default
        try:
            config[setting.name] = None if raw is None else setting.field.deserialize(raw)
        except ma.ValidationError as err:
            messages = err.messages if isinstance(err.messages, list) else [str(err.messages)]
            errors[setting.name] = " ".join(messages).rstrip(".")
    if errors:  # names each bad setting and why, never its value (it may be a secret)
        raise ConfigError("; ".join(f"{name}: {message}" for name, message in errors.items()))
    if config.get("LOG_FORMAT") is None:
        config["LOG_FORMAT"] = "json" if config["RELAY_ENV"] == "production" else "text"
    return config


def load_server_config(environ: Mapping[str, str]) -> dict[str, Any]:
    """Read the settings gunicorn's master needs (bind, workers, timeouts, logging).

    Secrets are neither required nor generated here: the master must start (and log) even
    in production; each worker checks them in ``load_config`` when it builds the app.

    :raises ConfigError: a value does not parse.
    """
    return _read(environ, [s for s in SETTINGS if s.server], {})


def load_config(environ: Mapping[str, str], overrides: Mapping[str, Any] | None = None,
                *, instance_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Build the typed config from ``environ`` with ``overrides`` (already typed) on top.

    :raises ConfigError: a value does not parse, or production lacks a secret.
    """
    overrides = dict(overrides or {})
    config = _read(environ, SETTINGS, overrides)
    config.update(overrides)  # extra keys tests pass (e.g. TESTING)
    if isinstance(config["DATABASE_URL"], str):
        config["DATABASE_URL"] = normalize_database_url(config["DATABASE_URL"])
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
        "SESSION_SECRET_KEYS": [secrets.token_urlsafe(32)],
    }


def ensure_dev_secrets(instance: Path) -> dict[str, list[str]]:
    """Load development secrets from ``instance/``, generating them once (mode 0600); a file
    made before a secret existed gets that secret added once (``_add_dev_secrets``)."""
    path = instance / DEV_SECRETS_FILE
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        pass
    else:
        missing = [name for name in SECRET_NAMES if name not in values]
        return _add_dev_secrets(path, values, missing) if missing else values
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


def _add_dev_secrets(path: Path, values: dict, missing: list[str]) -> dict[str, list[str]]:
    """Add the ``missing`` secrets to an existing development file, keeping the others (the
    dev keys a developer already uses). One process writes, under an O_EXCL lock file, by
    replacing the file whole; the others wait for the names to appear."""
    lock = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_when_complete(path, names=missing, lock=lock)
    try:
        fresh = generate_secrets()
        values = {**values, **{name: fresh[name] for name in missing}}
        partial = path.with_name(path.name + ".new")
        with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
                       "w") as fh:
            json.dump(values, fh, indent=2)
        os.replace(partial, path)
    finally:
        os.close(fd)
        lock.unlink()
    return values


def _read_when_complete(path: Path, *, names: Iterable[str] = (),
                        lock: Path | None = None) -> dict[str, list[str]]:
    import time

    for _ in range(50):
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError:
            values = None  # another process is still writing it
        if values is not None and all(name in values for name in names):
            return values
        time.sleep(0.02)
    stale = f" (and {lock}, left by a process that stopped while adding to it)" if lock else ""
    raise ConfigError(f"{path} is not complete; delete it{stale} to regenerate development keys")
