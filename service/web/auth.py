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


def key_allowed(presented: str, *settings: str) -> bool:
    """Whether ``presented`` is one of the keys in the config ``settings`` (constant time):
    the one check behind the bearer routes and the console's sign-in form."""
    config = services().config
    return key_matches(presented, [key for setting in settings for key in config[setting]])


def bearer_token() -> str | None:
    """The token from ``Authorization: Bearer <token>``, if that is what was sent."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def require_key(*settings: str):
    """Decorate a view so it needs a bearer key listed in one of the config ``settings``."""

    def decorator(view):
        @functools.wraps(view)
        def wrapped(*args, **kwargs):
            token = bearer_token()
            if token is None or not key_allowed(token, *settings):
                raise UnauthorizedError()
            return view(*args, **kwargs)

        return wrapped

    return decorator


require_ingest_key = require_key("INGEST_API_KEYS")
require_admin_key = require_key("ADMIN_API_KEYS")
# An event's status: for the services that ingest, and for an operator following a view up.
require_ingest_or_admin_key = require_key("INGEST_API_KEYS", "ADMIN_API_KEYS")
