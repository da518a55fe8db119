"""The token vault: HighLevel tokens per location, encrypted at rest with MultiFernet.

The first of ``TOKEN_ENCRYPTION_KEYS`` encrypts; every key decrypts, so keys rotate
without downtime (``flask --app service tokens reencrypt`` moves old ciphertexts to
the current key; every write already uses it). No function here returns a secret
except ``credentials``, whose result hides the token from ``repr``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy.engine import Engine

from ..clock import expiry
from . import outbox
from .db import locations
from .engine import read_only

ACTIVE, INVALID, INACTIVE = "active", "invalid", "inactive"
# pit: Private Integration Token (static); oauth: a location's OAuth pair;
# agency: an agency's OAuth pair; minted: a location token made with it.
INACTIVE_RETRY = dt.timedelta(hours=1)


class TokenDecryptError(RuntimeError):
    """A stored token cannot be decrypted with any configured key."""


@dataclass(frozen=True)
class Credentials:
    location_id: str
    token_kind: str
    generation: int
    unauthorized_count: int
    access_token: str = field(repr=False)
    expires_at: dt.datetime | None = None
    company_id: str | None = None
    refreshable: bool = False

    def expiring(self, now: dt.datetime, margin: dt.timedelta) -> bool:
        return self.expires_at is not None and self.expires_at - now <= margin


class TokenVault:
    """Store, fetch and retire tokens; every secret crosses here encrypted."""

    def __init__(self, engine: Engine, keys: list[str]):
        self.engine = engine
        self.fernet = MultiFernet([Fernet(k) for k in keys])

    def _encrypt(self, value: str | None) -> str | None:
        return None if value is None else self.fernet.encrypt(value.encode()).decode()

    def _decrypt(self, value: str) -> str:
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
        values = {
            "token_kind": token_kind or ("oauth" if refresh_token else "pit"),
            "access_token": self._encrypt(access_token),
            "refresh_token": self._encrypt(refresh_token),
            "expires_at": expires_at, "company_id": company_id, "status": ACTIVE,
            "unauthorized_count": 0, "last_error": None, "retry_at": None, "updated_at": now,
        }
        c = locations.c
        with self.engine.begin() as conn:
            updated = conn.execute(
                locations.update().where(c.location_id == location_id)
                .values(generation=c.generation + 1, **values)
            ).rowcount
            if not updated:
                conn.execute(locations.insert().values(
                    location_id=location_id, created_at=now, generation=1, **values))
        return self.describe(location_id)

    def delete_token(self, location_id: str) -> bool:
        """Remove a location's token; return whether there was one."""
        with self.engine.begin() as conn:
            return bool(conn.execute(
                locations.delete().where(locations.c.location_id == location_id)).rowcount)

    def credentials(self, location_id: str) -> Credentials | None:
        """Return the usable token for a location, or None if it has none or it is invalid."""
        c = locations.c
        with read_only(self.engine) as conn:
            row = conn.execute(sa.select(locations).where(c.location_id == location_id)).first()
        if row is None or row.status != ACTIVE:
            return None
        return self._credentials(row)

    def _credentials(self, row) -> Credentials:
        return Credentials(location_id=row.location_id, token_kind=row.token_kind,
                           generation=row.generation,
                           unauthorized_count=row.unauthorized_count,
                           access_token=self._decrypt(row.access_token),
                           expires_at=row.expires_at, company_id=row.company_id,
                           refreshable=row.refresh_token is not None)

    def refresh(self, location_id: str, *, now: dt.datetime, refresher,
                stale_generation: int | None = None,
                margin: dt.timedelta = dt.timedelta(minutes=5)) -> Credentials | None:
        """Refresh an OAuth token once, across every process; return usable credentials.

        Single-flight: the location's row is locked (PostgreSQL ``FOR UPDATE``; SQLite's
        write transaction), re-read, and refreshed only if it is still the stale one
        (``stale_generation``, after a 401) or still due (ahead of expiry). The new
        access and refresh tokens are stored in the same transaction, so no process
        ever uses or refreshes the dead refresh token. ``refresher(refresh_token)``
        returns a ``TokenGrant`` or raises ``OAuthError``.
        """
        from ..highlevel.oauth import INVALID_GRANT, LOCATION_INACTIVE, OAuthError

        c = locations.c
        query = sa.select(locations).where(c.location_id == location_id)
        if self.engine.dialect.name == "postgresql":
            query = query.with_for_update()
        with self.engine.begin() as conn:
            row = conn.execute(query).first()
            if row is None or row.status == INVALID or not row.refresh_token:
                return None
            if row.status == INACTIVE and row.retry_at is not None and row.retry_at > now:
                return None
            current = self._credentials(row)
            if row.status == ACTIVE and (
                    (stale_generation is not None and row.generation != stale_generation)
                    or (stale_generation is None and not current.expiring(now, margin))):
                return current  # another process refreshed it meanwhile
            user_type = "Company" if row.token_kind == "agency" else "Location"
            try:
                grant = refresher(self._decrypt(row.refresh_token), user_type=user_type)
            except OAuthError as exc:
                values = {"last_error": exc.message[:500], "updated_at": now}
                if exc.kind == INVALID_GRANT:
                    values["status"] = INVALID
                elif exc.kind == LOCATION_INACTIVE:
                    values.update(status=INACTIVE, retry_at=now + INACTIVE_RETRY)
                conn.execute(locations.update().where(c.location_id == location_id)
                             .values(**values))
                if values.get("status") == INVALID:  # operators are told (outbox)
                    outbox.token_invalid(conn, location_id, reason=exc.message, now=now)
                # Still usable until it expires when the failure was passing.
                if (row.status != ACTIVE or "status" in values
                        or current.expiring(now, dt.timedelta(0))):
                    return None
                return current
            conn.execute(locations.update().where(c.location_id == location_id).values(
                access_token=self._encrypt(grant.access_token),
                refresh_token=self._encrypt(grant.refresh_token or
                                            self._decrypt(row.refresh_token)),
                expires_at=expiry(grant.expires_in, now=now), status=ACTIVE, retry_at=None,
                unauthorized_count=0, last_error=None, generation=c.generation + 1,
                updated_at=now))
            row = conn.execute(sa.select(locations).where(c.location_id == location_id)).one()
            return self._credentials(row)

    def inactive_due(self, now: dt.datetime) -> list[str]:
        """Locations parked as "not active" whose retry time has come."""
        c = locations.c
        with read_only(self.engine) as conn:
            return list(conn.execute(sa.select(c.location_id).where(
                c.status == INACTIVE, c.retry_at <= now)).scalars())

    def record_rejection(self, creds: Credentials, *, status: int, message: str | None,
                         now: dt.datetime) -> str:
        """Count a 401/403 for this token; return ``retry`` or ``invalid``.

        A 403 means the token lacks access: invalid at once. A 401 can be a gateway
        hiccup, so the token is invalid only after a second 401 in a row.
        """
        c = locations.c
        same_token = sa.and_(c.location_id == creds.location_id,
                             c.generation == creds.generation)
        with self.engine.begin() as conn:
            conn.execute(locations.update().where(same_token).values(
                unauthorized_count=c.unauthorized_count + 1,
                last_error=(message or f"HTTP {status}")[:500], updated_at=now))
            count = conn.execute(sa.select(c.unauthorized_count).where(same_token)).scalar()
            if count is None:
                return "retry"  # replaced meanwhile: the new token gets its own chance
            if status == 403 or count >= 2:
                conn.execute(locations.update().where(same_token).values(status=INVALID))
                outbox.token_invalid(conn, creds.location_id, reason=message or f"HTTP {status}",
                                     now=now)
                return "invalid"
            return "retry"

    def mark_invalid(self, location_id: str, *, message: str, now: dt.datetime) -> None:
        """Mark a location's token unusable (its views stay parked until a new one)."""
        with self.engine.begin() as conn:
            conn.execute(locations.update().where(locations.c.location_id == location_id)
                         .values(status=INVALID, last_error=message[:500], updated_at=now))
            outbox.token_invalid(conn, location_id, reason=message, now=now)

    def record_success(self, creds: Credentials, *, now: dt.datetime) -> None:
        """Reset the 401 count after a success (writes only when there was one)."""
        if not creds.unauthorized_count:
            return
        c = locations.c
        with self.engine.begin() as conn:
            conn.execute(locations.update().where(
                c.location_id == creds.location_id, c.generation == creds.generation
            ).values(unauthorized_count=0, last_error=None, updated_at=now))

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


def _summary(row) -> dict:
    return {
        "locationId": row.location_id, "tokenKind": row.token_kind, "status": row.status,
        "expiresAt": row.expires_at, "companyId": row.company_id,
        "hasRefreshToken": row.refresh_token is not None, "lastError": row.last_error,
        "retryAt": row.retry_at, "createdAt": row.created_at, "updatedAt": row.updated_at,
    }
