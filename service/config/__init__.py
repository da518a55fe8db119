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

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import marshmallow as ma
from cryptography.fernet import Fernet

from .dev_secrets import ensure_dev_secrets, generate_secrets
from .fields import normalize_database_url
from .settings import (
    DEV_PUBLIC_BASE_URL,
    MIN_API_KEY_LENGTH,
    SECRET_NAMES,
    SETTINGS,
    ConfigError,
    Setting,
)

__all__ = ["SETTINGS", "ConfigError", "Setting", "generate_secrets", "load_config",
           "load_server_config", "normalize_database_url", "production_problems"]


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
        config["PUBLIC_BASE_URL"] = DEV_PUBLIC_BASE_URL.format(port=config["PORT"])
    if config["OPERATOR_WEBHOOK_URLS"] and not config["OPERATOR_WEBHOOK_SECRET"]:
        # Not generated in development: the receiver must know it to verify anything.
        raise ConfigError("OPERATOR_WEBHOOK_SECRET is required when OPERATOR_WEBHOOK_URLS "
                          "is set: receivers verify the signature with it "
                          "(`flask --app service keys generate` makes one)")
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
