"""What is deleted, and when: events after their retention, and a location on request.

Both work in small batches, each its own short transaction, so neither holds SQLite's
write lock (or PostgreSQL's row locks) for long while views keep arriving. (The delivery
log's own pruning is ``deliverylog.prune``; the forwarder runs both every hour.)
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from . import documents as states
from . import notifications as operator_notifications
from . import prefixes, seen
from .db import delivery_log, documents, events, installs, locations, rate_limits
from .documents import BLOCKED, PENDING
from .viewrows import event_id_floor

BATCH = 5000
# A document's events are kept while it is one of these (pending, parked), pruned once it
# is delivered (idle) or dead.
UNFINISHED = (PENDING, BLOCKED)


def prune_events(engine: Engine, *, older_than: dt.datetime, batch: int = BATCH) -> int:
    """Delete events received before ``older_than`` whose view is finished: its document
    delivered (idle) or dead, or the view filtered (never to be sent). Events of
    documents still pending or parked are kept, whatever their age. Returns how many.

    Walks the primary key (time-ordered ids) a batch at a time: each transaction reads
    at most ``batch`` ids and deletes among them, however many old events are kept.
    """
    e, d = events.c, documents.c
    # The complement: the unfinished documents (pending or parked), a range of
    # ``ix_documents_status_due_at`` read once per batch (SQLite: a list; PostgreSQL: a
    # hashed subplan), whose size is the queue's, not the store's. Both earlier forms
    # grew with the store (bench/growth.py): ``document_row IN (SELECT id ... WHERE
    # status IN (idle, dead))`` read every finished document (1M) for each batch, and a
    # correlated ``EXISTS`` looked each event's document up by primary key, a page at a
    # random place among 1M documents per event. (An event's document always exists: the
    # foreign key; every status is one of the four.)
    unfinished = sa.select(d.id).where(d.status.in_(UNFINISHED))
    return _walk_events(engine, e.received_at < older_than,
                        sa.or_(e.document_row.is_(None), e.document_row.not_in(unfinished)),
                        below=event_id_floor(older_than), batch=batch)


def _walk_events(engine: Engine, *where, below: str | None = None, batch: int) -> int:
    """Delete the events matching ``where``, reading the primary key in order (below
    ``below``) ``batch`` ids per transaction; return how many."""
    e = events.c
    after, total = "", 0
    while True:
        with engine.begin() as conn:
            page = sa.select(e.id).where(e.id > after).order_by(e.id).limit(batch)
            if below is not None:
                page = page.where(e.id < below)
            ids = conn.execute(page).scalars().all()
            if not ids:
                return total
            after = ids[-1]
            total += conn.execute(events.delete().where(e.id.in_(ids), *where)).rowcount
        if len(ids) < batch:
            return total


def purge_location(engine: Engine, location_id: str, *, batch: int = BATCH) -> dict[str, int]:
    """Delete everything stored for a location (a data-erasure request): its events,
    documents, delivery log, operator notifications, token, installs, rate-limit state,
    view counts, known row and pixel prefixes. Returns the rows deleted per table (all
    zero when nothing was stored)."""
    counts = {
        # Events before documents (they reference them). Events have no index by location
        # (it would cost every pixel view): walk the primary key, one batch at a time.
        "events": _walk_events(engine, events.c.location_id == location_id, batch=batch),
        "documents": _batches(lambda conn: states.purge(conn, location_id, batch=batch),
                              engine, batch),
        "deliveries": _delete_batched(engine, delivery_log,
                                      delivery_log.c.location_id == location_id,
                                      delivery_log.c.id, batch),
        "notifications": operator_notifications.purge_location(engine, location_id),
    }
    with engine.begin() as conn:
        counts["tokens"] = conn.execute(
            locations.delete().where(locations.c.location_id == location_id)).rowcount
        counts["installs"] = conn.execute(installs.delete().where(
            installs.c.target_type == "location", installs.c.target_id == location_id
        )).rowcount
        counts["rateLimits"] = conn.execute(
            rate_limits.delete().where(rate_limits.c.resource == location_id)).rowcount
        counts.update(seen.purge(conn, location_id))
        counts["pixelPrefixes"] = prefixes.purge(conn, location_id)
    return counts


def _batches(delete_some, engine: Engine, batch: int) -> int:
    """Run ``delete_some(conn)`` (which deletes up to ``batch`` rows) one transaction at a
    time until it deletes fewer; return how many in all."""
    total = 0
    while True:
        with engine.begin() as conn:
            deleted = delete_some(conn)
        total += deleted
        if deleted < batch:
            return total


def _delete_batched(engine: Engine, table: sa.Table, where, key: sa.Column,
                    batch: int) -> int:
    total = 0
    while True:
        with engine.begin() as conn:
            ids = conn.execute(sa.select(key).where(where).limit(batch)).scalars().all()
            if ids:
                total += conn.execute(table.delete().where(key.in_(ids))).rowcount
        if len(ids) < batch:
            return total
