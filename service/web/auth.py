"""Bearer keys and their scopes: which key may call which route, and the console's check.

Two kinds of key. Environment keys are compared first, in memory and in constant time, so
the ingest path never reaches the store for them: ``INGEST_API_KEYS`` may post events for
every location (and read their status), ``ADMIN_API_KEYS`` hold ``admin``. Stored keys
(``store.apikeys``: made by ``POST /v1/keys``, ``flask keys create`` or the console) are
found by their hash and carry their own scopes: ``events:write`` (maybe for listed
locations only), ``pixels:mint``, ``read`` and ``admin``, which implies every other.

No key, a malformed, unknown or revoked one is 401; a key without the route's scope is
403 naming the scope (``require_scope``).
"""

from __future__ import annotations

import functools
import hmac
from copy import deepcopy

from flask import g, request

from ..store.apikeys import SCOPES, Grant
from .deps import services
from .errors import ForbiddenError, UnauthorizedError

# What an environment key may do, by the setting that lists it (checked in this order).
ENV_GRANTS = (("ADMIN_API_KEYS", Grant(frozenset({"admin"}))),
              ("INGEST_API_KEYS", Grant(frozenset({"events:write"}))))
MAX_KEY_LENGTH = 4096
SECURITY_SCHEME = "apiKey"
SECURITY_DESCRIPTION = """\
`Authorization: Bearer <key>`. A key has scopes (each operation lists the ones it takes in
`x-scopes`; any one of them will do):

- `events:write`: `POST /v1/events`, `GET /v1/events/{id}`. A key made with `locations`
  posts and reads events of those locations only: another location is 403 (nothing of the
  batch is stored), and its events are not found.
- `pixels:mint`: `POST /v1/pixel-urls`.
- `read`: `GET /v1/locations`, `GET /v1/locations/{id}`, `GET /v1/deliveries`,
  `GET /v1/events/{id}`.
- `admin`: every route, among them tokens, purge, replay and `/v1/keys`.

`INGEST_API_KEYS` keys hold `events:write` for every location, `ADMIN_API_KEYS` keys
`admin`; keys made with `POST /v1/keys` hold the scopes they were made with. No key, or an
unknown or revoked one, is 401; a key without the scope is 403 naming it."""


def key_matches(presented: str, keys: list[str]) -> bool:
    """Compare ``presented`` with every key in constant time (no early exit)."""
    candidate = presented.encode()
    found = False
    for key in keys:
        found |= hmac.compare_digest(candidate, key.encode())
    return found


def key_allowed(presented: str, *settings: str, config=None) -> bool:
    """Whether ``presented`` is one of the keys in the config ``settings`` (constant time)."""
    config = services().config if config is None else config
    return key_matches(presented, [key for setting in settings for key in config[setting]])


def grant_for(presented: str, svc=None) -> Grant | None:
    """What ``presented`` may do: an environment key's grant (every listed key compared),
    else a stored key's (None: unknown, revoked or malformed). ``svc``: the services, for a
    caller outside Flask's app context (the ingest front door)."""
    if len(presented) > MAX_KEY_LENGTH:
        return None
    svc = services() if svc is None else svc
    found = None
    for setting, grant in ENV_GRANTS:
        if key_allowed(presented, setting, config=svc.config) and found is None:
            found = grant
    if found is not None:
        return found
    return svc.keys.find_by_key(presented, now=svc.clock())


def bearer_token() -> str | None:
    """The token from ``Authorization: Bearer <token>``, if that is what was sent."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def current_grant() -> Grant:
    """The grant ``require_scope`` found for this request."""
    return g.grant


def require_scope(scope: str, *alternatives: str):
    """Decorate a view so it needs a bearer key holding ``scope`` (or one of
    ``alternatives``), and document that in the operation (``security``, ``x-scopes``)."""
    scopes = (scope, *alternatives)
    assert all(s in SCOPES for s in scopes), scopes

    def decorator(view):
        @functools.wraps(view)
        def wrapped(*args, **kwargs):
            token = bearer_token()
            grant = grant_for(token) if token is not None else None
            if grant is None:
                raise UnauthorizedError()
            if not any(grant.has(s) for s in scopes):
                raise ForbiddenError(f"This key lacks the scope {' or '.join(scopes)}")
            g.grant = grant
            return view(*args, **kwargs)

        # flask-smorest reads the operation's document from ``_apidoc`` (as ``bp.doc``).
        wrapped._apidoc = deepcopy(getattr(wrapped, "_apidoc", {}))
        manual = wrapped._apidoc.setdefault("manual_doc", {})
        manual.update({"security": [{SECURITY_SCHEME: []}], "x-scopes": list(scopes)})
        return wrapped

    return decorator


def require_locations(location_ids) -> None:
    """Refuse (403, naming them) locations the request's key may not post events for.

    :raises ForbiddenError: nothing has been stored.
    """
    grant = current_grant()
    refused = sorted({loc for loc in location_ids if not grant.may_write(loc)})
    if refused:
        named = ", ".join(refused[:5]) + (f" and {len(refused) - 5} more" if refused[5:] else "")
        raise ForbiddenError(f"This key may not post events for location {named}",
                             errors={"locationId": refused})


# The names the views used before scopes (kept for branches written against them).
require_ingest_key = require_scope("events:write")
require_admin_key = require_scope("admin")
require_ingest_or_admin_key = require_scope("events:write", "read")
