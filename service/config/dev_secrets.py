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
        "SESSION_SECRET_KEYS": [secrets.token_urlsafe(32)],
    }


def generate_webhook_secret() -> str:
    """A Standard Webhooks secret for OPERATOR_WEBHOOK_SECRET: 32 random bytes. Not made
    for development: the operator's receiver must be given it to verify anything."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def ensure_dev_secrets(instance: Path) -> dict[str, list[str]]:
    """Load development secrets from ``instance/``, generating them once (mode 0600); a file
    made before a secret existed gets that secret added once (``_add_dev_secrets``)."""
    path = instance / DEV_SECRETS_FILE
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        pass
    else:
        missing = [name for name in generate_secrets() if name not in values]
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


def _read_when_complete(path: Path, *, names: list[str] | tuple = (),
                        lock: Path | None = None) -> dict[str, list[str]]:
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
