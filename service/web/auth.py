"""Key checks for the ingest and admin routes, and for the console's sign-in."""

from __future__ import annotations

import functools
import hmac

from flask import request

from .deps import services
from .errors import UnauthorizedError


def key_matches(presented: str, keys: list[str]) -> bool:
    """Compare ``presented`` with every key in constant time (no early exit)."""
    candidate = presented.encode()
    found = False
    for key in keys:
        found |= hmac.compare_digest(candidate, key.encode())
    return found


def key_allowed(presented: str, setting: str) -> bool:
    """Whether ``presented`` is one of the keys in config ``setting`` (constant time): the
    one check behind the bearer routes and the console's sign-in form."""
    return key_matches(presented, services().config[setting])


def bearer_token() -> str | None:
    """The token from ``Authorization: Bearer <token>``, if that is what was sent."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def require_key(setting: str):
    """Decorate a view so it needs a bearer key listed in config ``setting``."""

    def decorator(view):
        @functools.wraps(view)
        def wrapped(*args, **kwargs):
            token = bearer_token()
            if token is None or not key_allowed(token, setting):
                raise UnauthorizedError()
            return view(*args, **kwargs)

        return wrapped

    return decorator


require_ingest_key = require_key("INGEST_API_KEYS")
require_admin_key = require_key("ADMIN_API_KEYS")
