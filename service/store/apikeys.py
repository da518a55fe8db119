"""API keys kept in the store (``api_keys``): made, listed, revoked, and found by the key.

A key is ``hlr_`` and 43 characters of ``secrets.token_urlsafe(32)`` (256 random bits). It is
shown once, when made; the store keeps its SHA-256 and its first characters (``prefix``).
Each key has scopes (``SCOPES``; ``admin`` implies every other) and, for ``events:write``,
optionally a list of locations.

``find_by_key`` is on every request of a stored key, so it keeps what it found for
``CACHE_SECONDS`` per process: a key revoked in one process stops working in every other
within that time, with no restart. Only keys that work are kept (a new key is never in the
cache: nobody could have presented it before it existed), and at most ``CACHE_SIZE`` of them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ..ids import is_valid_id
from .db import api_keys
from .engine import read_only

SCOPES = ("events:write", "pixels:mint", "read", "admin")
KEY_PREFIX = "hlr_"
KEY_FORMAT = re.compile(r"hlr_[A-Za-z0-9_-]{43}")
PREFIX_LENGTH = 12  # what is shown of a key: "hlr_" and 8 of its random characters
MAX_NAME_LENGTH = 100
MAX_LOCATIONS = 100
CACHE_SECONDS = 2.0  # how long a process may keep using a key after its revocation
CACHE_SIZE = 1024
LAST_USED_EVERY = dt.timedelta(minutes=1)  # last_used_at moves at most this often
MAX_ID = 2**63 - 1  # ids beyond PostgreSQL's bigint name no key (and must not reach it)


@dataclass(frozen=True)
class Grant:
    """What a key may do: its scopes and, for ``events:write``, its locations (None: all)."""

    scopes: frozenset[str]
    locations: frozenset[str] | None = None
    key_id: int | None = None  # None: a key from the environment

    def has(self, scope: str) -> bool:
        """Whether the key holds ``scope`` (``admin`` holds them all)."""
        return "admin" in self.scopes or scope in self.scopes

    def may_write(self, location_id: str) -> bool:
        """Whether the key may post events for ``location_id``."""
        if "admin" in self.scopes:
            return True
        return "events:write" in self.scopes and (
            self.locations is None or location_id in self.locations)

    def may_read_event(self, location_id: str) -> bool:
        """Whether the key may read the status of an event of ``location_id``: ``read``
        sees every location; ``events:write`` only the ones it may write."""
        return self.has("read") or self.may_write(location_id)


def hash_key(key: str) -> str:
    """The SHA-256 (hex) the store keeps of ``key``."""
    return hashlib.sha256(key.encode()).hexdigest()


def looks_like_key(value: str) -> bool:
    """Whether ``value`` has the shape of a stored key (checked before any lookup)."""
    return KEY_FORMAT.fullmatch(value) is not None


def check_grant(scopes: list[str], locations: list[str] | None) -> None:
    """Refuse scopes and locations that do not make a key (the schema says it first).

    :raises ValueError: naming what is wrong.
    """
    if not scopes or any(s not in SCOPES for s in scopes):
        raise ValueError(f"scopes must be one or more of {', '.join(SCOPES)}")
    if locations is not None:
        if "events:write" not in scopes or "admin" in scopes:
            raise ValueError("locations limit events:write: give it, without admin")
        if not 1 <= len(locations) <= MAX_LOCATIONS or not all(map(is_valid_id, locations)):
            raise ValueError(f"locations must be 1-{MAX_LOCATIONS} location ids")


def _row(row) -> dict:
    """A key as the API and the console show it: never the key, never its hash."""
    return {"id": row.id, "name": row.name, "prefix": row.prefix,
            "scopes": [s for s in SCOPES if s in row.scopes.split()],
            "locations": row.locations.split() if row.locations is not None else None,
            "createdAt": row.created_at, "lastUsedAt": row.last_used_at,
            "revokedAt": row.revoked_at}


class ApiKeys:
    """The ``api_keys`` table, and a per-process cache of the keys found in it."""

    def __init__(self, engine: Engine, *, cache_seconds: float = CACHE_SECONDS):
        self.engine = engine
        self.cache_for = dt.timedelta(seconds=cache_seconds)
        self._cache: OrderedDict[str, tuple[Grant, dt.datetime]] = OrderedDict()
        self._lock = threading.Lock()

    def create(self, name: str, scopes: list[str], *, locations: list[str] | None = None,
               now: dt.datetime) -> tuple[dict, str]:
        """Make a key; return its row and the key itself (the only time it is known).

        :raises ValueError: a name, scope or location that ``check_grant`` refuses.
        """
        if not 1 <= len(name) <= MAX_NAME_LENGTH:
            raise ValueError(f"name must be 1-{MAX_NAME_LENGTH} characters")
        check_grant(scopes, locations)
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        ordered = [s for s in SCOPES if s in scopes]
        kept = sorted(set(locations)) if locations is not None else None
        with self.engine.begin() as conn:
            key_id = conn.execute(api_keys.insert().values(
                name=name, prefix=key[:PREFIX_LENGTH], hash=hash_key(key),
                scopes=" ".join(ordered), created_at=now,
                locations=" ".join(kept) if kept is not None else None,
            )).inserted_primary_key[0]
        found = self.get(key_id)
        assert found is not None
        return found, key

    def list(self) -> list[dict]:
        """Every key, the newest first (revoked ones too, with ``revokedAt``)."""
        with read_only(self.engine) as conn:
            rows = conn.execute(sa.select(api_keys).order_by(api_keys.c.id.desc())).all()
        return [_row(r) for r in rows]

    def get(self, key_id: int) -> dict | None:
        """One key's row (as ``list`` shows it), or None."""
        if not 1 <= key_id <= MAX_ID:
            return None
        with read_only(self.engine) as conn:
            row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).first()
        return _row(row) if row is not None else None

    def revoke(self, key_id: int, *, now: dt.datetime) -> bool:
        """Revoke a key (it stops working everywhere within ``CACHE_SECONDS``); False if
        there is no such key. Revoking a revoked key keeps its first ``revokedAt``."""
        if not 1 <= key_id <= MAX_ID:
            return False
        with self.engine.begin() as conn:
            found = conn.execute(sa.select(api_keys.c.id, api_keys.c.hash)
                                 .where(api_keys.c.id == key_id)).first()
            if found is None:
                return False
            conn.execute(api_keys.update().where(api_keys.c.id == key_id,
                                                 api_keys.c.revoked_at.is_(None))
                         .values(revoked_at=now))
        with self._lock:  # this process stops at once; the others within CACHE_SECONDS
            self._cache.pop(found.hash, None)
        return True

    def find_by_key(self, key: str, *, now: dt.datetime) -> Grant | None:
        """The grant of an unrevoked stored ``key``, or None (unknown, revoked, malformed)."""
        if not looks_like_key(key):
            return None
        digest = hash_key(key)
        with self._lock:
            cached = self._cache.get(digest)
        if cached is not None and now - cached[1] < self.cache_for:
            return cached[0]
        grant = self._lookup(digest, now)
        with self._lock:
            if grant is None:
                self._cache.pop(digest, None)
            else:
                self._cache[digest] = (grant, now)
                self._cache.move_to_end(digest)
                while len(self._cache) > CACHE_SIZE:
                    self._cache.popitem(last=False)
        return grant

    def _lookup(self, digest: str, now: dt.datetime) -> Grant | None:
        k = api_keys.c
        with read_only(self.engine) as conn:
            row = conn.execute(sa.select(k.id, k.scopes, k.locations, k.last_used_at)
                               .where(k.hash == digest, k.revoked_at.is_(None))).first()
        if row is None:
            return None
        if row.last_used_at is None or now - row.last_used_at >= LAST_USED_EVERY:
            with self.engine.begin() as conn:  # the condition keeps processes from piling on
                conn.execute(api_keys.update().where(
                    k.id == row.id, sa.or_(k.last_used_at.is_(None),
                                           k.last_used_at <= now - LAST_USED_EVERY))
                    .values(last_used_at=now))
        locations = frozenset(row.locations.split()) if row.locations is not None else None
        return Grant(frozenset(row.scopes.split()), locations, key_id=row.id)

    def console_key(self, key_id: int) -> tuple[str, Grant] | None:
        """An unrevoked key's hash and grant, read now (the console's session check)."""
        if not 1 <= key_id <= MAX_ID:
            return None
        k = api_keys.c
        with read_only(self.engine) as conn:
            row = conn.execute(sa.select(k.hash, k.scopes).where(
                k.id == key_id, k.revoked_at.is_(None))).first()
        return (row.hash, Grant(frozenset(row.scopes.split()), key_id=key_id)) \
            if row is not None else None
