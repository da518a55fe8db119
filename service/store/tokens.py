"""The token vault: HighLevel tokens per location, encrypted at rest with MultiFernet.

Persistence only: rows of ``locations`` in and out, secrets encrypted on the way in and
decrypted only when asked for (``StoredToken.access_token()``). What a token is good for,
when it is refreshed, minted, counted against or given up on is decided by the token
policy, service/forward/credentials.py.

The first of ``TOKEN_ENCRYPTION_KEYS`` encrypts; every key decrypts, so keys rotate
without downtime (``flask --app service tokens reencrypt`` moves old ciphertexts to
the current key; every write already uses it).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy.engine import Engine

from . import outbox
from .db import locations
from .engine import read_only

# A row's status; only the token policy moves a row between them.
ACTIVE, INVALID, INACTIVE = "active", "invalid", "inactive"
# Token kinds. pit: Private Integration Token (static); oauth: a location's OAuth pair;
# agency: an agency's OAuth pair; minted: a location token made with it.
PIT, OAUTH, AGENCY, MINTED = "pit", "oauth", "agency", "minted"


class TokenDecryptError(RuntimeError):
    """A stored token cannot be decrypted with any configured key."""


@dataclass(frozen=True)
class NewToken:
    """A token to store under a location (or a company) id."""

    location_id: str
    access_token: str = field(repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    expires_at: dt.datetime | None = None
    company_id: str | None = None
    token_kind: str | None = None  # default: oauth with a refresh token, else pit


@dataclass(frozen=True)
class StoredToken:
    """A location's row as stored: the secrets stay encrypted until asked for."""

    location_id: str
    token_kind: str
    status: str
    generation: int  # bumped by every new or renewed token
    unauthorized_count: int
    expires_at: dt.datetime | None
    company_id: str | None
    retry_at: dt.datetime | None
    refreshable: bool
    vault: TokenVault = field(repr=False, compare=False)
    sealed_access: str = field(repr=False)
    sealed_refresh: str | None = field(repr=False)

    def access_token(self) -> str:
        """Decrypt the access token.

        :raises TokenDecryptError: no configured key decrypts it.
        """
        return self.vault.decrypt(self.sealed_access)

    def refresh_token(self) -> str | None:
        """Decrypt the refresh token (None: the token has none)."""
        return None if self.sealed_refresh is None else self.vault.decrypt(self.sealed_refresh)


# read_many's query, built once (the forwarder runs it for every batch).
_READ_MANY = sa.select(locations).where(
    locations.c.location_id.in_(sa.bindparam("ids", expanding=True)))


class TokenVault:
    """Store, fetch and retire tokens; every secret crosses here encrypted."""

    def __init__(self, engine: Engine, keys: list[str]):
        self.engine = engine
        self.fernet = MultiFernet([Fernet(k) for k in keys])

    def _encrypt(self, value: str | None) -> str | None:
        return None if value is None else self.fernet.encrypt(value.encode()).decode()

    def decrypt(self, value: str) -> str:
        """Decrypt one stored ciphertext.

        :raises TokenDecryptError: no configured key decrypts it.
        """
        try:
            return self.fernet.decrypt(value.encode()).decode()
        except InvalidToken:
            raise TokenDecryptError(
                "stored token does not decrypt with TOKEN_ENCRYPTION_KEYS (a key was removed?)"
            ) from None

    def set_token(self, location_id: str, *, access_token: str, now: dt.datetime,
                  refresh_token: str | None = None, expires_at: dt.datetime | None = None,
                  company_id: str | None = None, token_kind: str | None = None) -> dict:
        """Store (or replace) a location's (or company's) token; return its public summary."""
        with self.engine.begin() as conn:
            self.write(conn, NewToken(location_id, access_token, refresh_token, expires_at,
                                      company_id, token_kind), now=now)
        return self.describe(location_id)

    def write(self, conn: sa.Connection, token: NewToken, *, now: dt.datetime) -> None:
        """Store (or replace) ``token`` in the caller's transaction: active, a new
        generation, its 401 count and last error cleared."""
        values = {
            "token_kind": token.token_kind or (OAUTH if token.refresh_token else PIT),
            "access_token": self._encrypt(token.access_token),
            "refresh_token": self._encrypt(token.refresh_token),
            "expires_at": token.expires_at, "company_id": token.company_id, "status": ACTIVE,
            "unauthorized_count": 0, "last_error": None, "retry_at": None, "updated_at": now,
        }
        c = locations.c
        updated = conn.execute(
            locations.update().where(c.location_id == token.location_id)
            .values(generation=c.generation + 1, **values)
        ).rowcount
        if not updated:
            conn.execute(locations.insert().values(
                location_id=token.location_id, created_at=now, generation=1, **values))

    def delete_token(self, location_id: str) -> bool:
        """Remove a location's token; return whether there was one."""
        with self.engine.begin() as conn:
            return bool(conn.execute(
                locations.delete().where(locations.c.location_id == location_id)).rowcount)

    def read(self, location_id: str) -> StoredToken | None:
        """Return a location's stored token, whatever its status (None: it has none)."""
        with read_only(self.engine) as conn:
            row = conn.execute(sa.select(locations)
                               .where(locations.c.location_id == location_id)).first()
        return None if row is None else self._stored(row)

    def read_many(self, location_ids: Iterable[str]) -> dict[str, StoredToken]:
        """``read`` for several locations in one query (those without a token are absent)."""
        with read_only(self.engine) as conn:
            rows = conn.execute(_READ_MANY, {"ids": sorted(set(location_ids))}).all()
        return {row.location_id: self._stored(row) for row in rows}

    def _stored(self, row) -> StoredToken:
        return StoredToken(location_id=row.location_id, token_kind=row.token_kind,
                           status=row.status, generation=row.generation,
                           unauthorized_count=row.unauthorized_count,
                           expires_at=row.expires_at, company_id=row.company_id,
                           retry_at=row.retry_at, refreshable=row.refresh_token is not None,
                           vault=self, sealed_access=row.access_token,
                           sealed_refresh=row.refresh_token)

    @contextmanager
    def hold(self, location_id: str) -> Iterator[HeldToken]:
        """Open one write transaction on a location's token row (committed on exit).

        ``read()`` in it locks the row until the commit (PostgreSQL ``FOR UPDATE``;
        SQLite's write transaction holds the database): what single-flight refresh needs.
        """
        with self.engine.begin() as conn:
            yield HeldToken(self, conn, location_id)

    def inactive_due(self, now: dt.datetime) -> list[str]:
        """Locations parked as "not active" whose retry time has come."""
        c = locations.c
        with read_only(self.engine) as conn:
            return list(conn.execute(sa.select(c.location_id).where(
                c.status == INACTIVE, c.retry_at <= now)).scalars())

    def describe(self, location_id: str) -> dict | None:
        """Return a location's token summary (kind, status, expiry, last error): no secret."""
        c = locations.c
        with read_only(self.engine) as conn:
            row = conn.execute(sa.select(locations).where(c.location_id == location_id)).first()
        return None if row is None else _summary(row)

    def list(self) -> list[dict]:
        """Return every location's token summary, ordered by id."""
        with read_only(self.engine) as conn:
            rows = conn.execute(sa.select(locations).order_by(locations.c.location_id))
            return [_summary(row) for row in rows]

    def reencrypt(self) -> int:
        """Re-encrypt every stored token with the current (first) key; return rows done.

        Safe while other processes refresh or store tokens: a row is rewritten only if
        its ciphertexts are still the ones just read (compare-and-set, one short
        transaction per row), else re-read and tried again. So a concurrent write, such
        as a refresh that spent the old refresh token, always wins.
        """
        c = locations.c
        with read_only(self.engine) as conn:
            ids = list(conn.execute(sa.select(c.location_id).order_by(c.location_id)).scalars())
        return sum(self._reencrypt_row(location_id) for location_id in ids)

    def _reencrypt_row(self, location_id: str) -> bool:
        c = locations.c
        while True:
            with read_only(self.engine) as conn:
                row = conn.execute(sa.select(c.access_token, c.refresh_token)
                                   .where(c.location_id == location_id)).first()
            if row is None:
                return False  # deleted meanwhile
            values = {"access_token": self.fernet.rotate(row.access_token.encode()).decode()}
            if row.refresh_token:
                values["refresh_token"] = self.fernet.rotate(
                    row.refresh_token.encode()).decode()
            unchanged = sa.and_(
                c.location_id == location_id, c.access_token == row.access_token,
                c.refresh_token.is_(None) if row.refresh_token is None
                else c.refresh_token == row.refresh_token)
            with self.engine.begin() as conn:
                if conn.execute(locations.update().where(unchanged).values(**values)).rowcount:
                    return True
            # Rewritten since the read (refresh, new token): rotate what is there now.


class HeldToken:
    """A location's token row inside one write transaction (``TokenVault.hold``)."""

    def __init__(self, vault: TokenVault, conn: sa.Connection, location_id: str):
        self.vault, self.conn, self.location_id = vault, conn, location_id

    def _where(self, generation: int | None = None):
        c = locations.c
        where = c.location_id == self.location_id
        return where if generation is None else sa.and_(where, c.generation == generation)

    def read(self) -> StoredToken | None:
        """Read the row and lock it until the transaction ends."""
        query = sa.select(locations).where(self._where())
        if self.conn.dialect.name == "postgresql":
            query = query.with_for_update()
        row = self.conn.execute(query).first()
        return None if row is None else self.vault._stored(row)

    def mark(self, *, message: str, now: dt.datetime, status: str | None = None,
             retry_at: dt.datetime | None = None, generation: int | None = None) -> None:
        """Record an error (and a new status, a retry time) on the row; with
        ``generation``, only while that token is still the stored one. A token made
        invalid is told to operators in the same transaction (the outbox)."""
        values = {"last_error": message[:500], "updated_at": now}
        if status is not None:
            values["status"] = status
        if retry_at is not None:
            values["retry_at"] = retry_at
        changed = self.conn.execute(
            locations.update().where(self._where(generation)).values(**values)).rowcount
        if changed and status == INVALID:
            outbox.token_invalid(self.conn, self.location_id, reason=message, now=now)

    def count_unauthorized(self, *, generation: int, message: str,
                           now: dt.datetime) -> int | None:
        """Add one to that token's 401/403 count; return the count (None: replaced since)."""
        c = locations.c
        self.conn.execute(locations.update().where(self._where(generation)).values(
            unauthorized_count=c.unauthorized_count + 1, last_error=message[:500],
            updated_at=now))
        return self.conn.execute(sa.select(c.unauthorized_count)
                                 .where(self._where(generation))).scalar()

    def clear_unauthorized(self, *, generation: int, now: dt.datetime) -> None:
        """Reset that token's 401/403 count and last error (if it is still the stored one)."""
        self.conn.execute(locations.update().where(self._where(generation)).values(
            unauthorized_count=0, last_error=None, updated_at=now))

    def renew(self, *, access_token: str, refresh_token: str | None,
              expires_at: dt.datetime | None, now: dt.datetime) -> StoredToken:
        """Store a renewed pair in place: a new generation, active, errors cleared."""
        c = locations.c
        self.conn.execute(locations.update().where(self._where()).values(
            access_token=self.vault._encrypt(access_token),
            refresh_token=self.vault._encrypt(refresh_token), expires_at=expires_at,
            status=ACTIVE, retry_at=None, unauthorized_count=0, last_error=None,
            generation=c.generation + 1, updated_at=now))
        return self.vault._stored(self.conn.execute(
            sa.select(locations).where(self._where())).one())


def _summary(row) -> dict:
    return {
        "locationId": row.location_id, "tokenKind": row.token_kind, "status": row.status,
        "expiresAt": row.expires_at, "companyId": row.company_id,
        "hasRefreshToken": row.refresh_token is not None, "lastError": row.last_error,
        "retryAt": row.retry_at, "createdAt": row.created_at, "updatedAt": row.updated_at,
    }
