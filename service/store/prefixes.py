"""Location pixel prefixes (rows of ``pixel_prefixes``): mint, list, revoke, look up.

A prefix is a location's opt-in to pixels whose document id is filled in by whoever sends
the email (a template's merge field). The row holds no secret: the signed prefix is made
from it (``ingest/prefixes.py``) and is valid only while the row exists unrevoked.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .db import pixel_prefixes
from .engine import read_only

PREFIX_KINDS = ("invoice", "estimate")
ID_PREFIX = "pp_"


@dataclass(frozen=True)
class PixelPrefix:
    """One prefix's row."""

    id: str
    location_id: str
    kind: str
    name: str | None
    created_at: dt.datetime
    revoked_at: dt.datetime | None = None


def _prefix(row) -> PixelPrefix:
    return PixelPrefix(row.id, row.location_id, row.kind, row.name, row.created_at,
                       row.revoked_at)


def create_prefix(engine: Engine, location_id: str, *, kind: str, now: dt.datetime,
                  name: str | None = None) -> PixelPrefix:
    """Add a prefix for ``location_id``'s documents of ``kind`` (the location's opt-in)."""
    if kind not in PREFIX_KINDS:
        raise ValueError(f"kind must be one of {PREFIX_KINDS}")
    prefix = PixelPrefix(ID_PREFIX + secrets.token_hex(6), location_id, kind, name,
                         now.replace(microsecond=0))
    with engine.begin() as conn:
        conn.execute(pixel_prefixes.insert().values(
            id=prefix.id, location_id=location_id, kind=kind, name=name,
            created_at=prefix.created_at))
    return prefix


def list_prefixes(engine: Engine, location_id: str) -> list[PixelPrefix]:
    """The location's prefixes, revoked ones too, oldest first."""
    c = pixel_prefixes.c
    query = (sa.select(pixel_prefixes).where(c.location_id == location_id)
             .order_by(c.created_at, c.id))
    with read_only(engine) as conn:
        return [_prefix(row) for row in conn.execute(query)]


def revoke_prefix(engine: Engine, location_id: str, prefix_id: str, *,
                  now: dt.datetime) -> PixelPrefix | None:
    """Revoke the location's prefix ``prefix_id`` (again: no change); None if the location
    has no such prefix (another location's is not found either)."""
    c = pixel_prefixes.c
    mine = sa.and_(c.id == prefix_id, c.location_id == location_id)
    with engine.begin() as conn:
        conn.execute(pixel_prefixes.update().where(mine, c.revoked_at.is_(None))
                     .values(revoked_at=now))
        row = conn.execute(sa.select(pixel_prefixes).where(mine)).first()
    return _prefix(row) if row else None


def active_prefix(engine: Engine, prefix_id: str) -> PixelPrefix | None:
    """The prefix ``prefix_id`` if it exists and is not revoked."""
    c = pixel_prefixes.c
    query = sa.select(pixel_prefixes).where(c.id == prefix_id, c.revoked_at.is_(None))
    with read_only(engine) as conn:
        row = conn.execute(query).first()
    return _prefix(row) if row else None


def purge(conn: sa.Connection, location_id: str) -> int:
    """Delete every prefix of ``location_id`` (erasure); how many rows."""
    return conn.execute(pixel_prefixes.delete().where(
        pixel_prefixes.c.location_id == location_id)).rowcount
