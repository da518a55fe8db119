"""Development secrets: generated once into ``instance/`` so a newcomer can start at once."""

from __future__ import annotations

import base64
import json
import os
import secrets
import sys
import time
from pathlib import Path

from cryptography.fernet import Fernet

from .settings import ConfigError

DEV_SECRETS_FILE = "dev-secrets.json"


def generate_secrets() -> dict[str, list[str]]:
    """Make one fresh value for each secret key list."""
    return {
        "INGEST_API_KEYS": ["ik_" + secrets.token_urlsafe(24)],
        "ADMIN_API_KEYS": ["ak_" + secrets.token_urlsafe(24)],
        "PIXEL_SIGNING_KEYS": [secrets.token_urlsafe(32)],
        "TOKEN_ENCRYPTION_KEYS": [Fernet.generate_key().decode()],
    }


def generate_webhook_secret() -> str:
    """A Standard Webhooks secret for OPERATOR_WEBHOOK_SECRET: 32 random bytes. Not made
    for development: the operator's receiver must be given it to verify anything."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


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
    for _ in range(50):
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            time.sleep(0.02)  # another process is still writing it
    raise ConfigError(f"{path} is not valid JSON; delete it to regenerate development keys")
