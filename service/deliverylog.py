"""The delivery log (one row per attempt): reading it, pruning it, replaying dead letters."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .db import delivery_log, documents, read_only
from .store import DEAD, PENDING


@dataclass(frozen=True)
class LogFilter:
    location_id: str | None = None
    document_id: str | None = None
    outcome: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    def empty(self) -> bool:
        return not any(vars(self).values())


def list_deliveries(engine: Engine, filters: LogFilter, *, limit: int = 100,
                    before: int | None = None) -> tuple[list[dict], int | None]:
    """Return attempts newest first, and the cursor for the next page (None at the end)."""
    log = delivery_log.c
    query = sa.select(delivery_log).order_by(log.id.desc()).limit(limit + 1)
    if filters.location_id:
        query = query.where(log.location_id == filters.location_id)
    if filters.document_id:
        query = query.where(log.document_id == filters.document_id)
    if filters.outcome:
        query = query.where(log.outcome == filters.outcome)
    if filters.since:
        query = query.where(log.at >= filters.since)
    if filters.until:
        query = query.where(log.at < filters.until)
    if before is not None:
        query = query.where(log.id < before)
    with read_only(engine) as conn:
        rows = conn.execute(query).all()
    page = [_attempt(row) for row in rows[:limit]]
    return page, (rows[limit - 1].id if len(rows) > limit else None)


def _attempt(row) -> dict:
    return {
        "id": row.id, "at": row.at, "kind": row.kind, "locationId": row.location_id,
        "documentId": row.document_id, "attempt": row.attempt, "outcome": row.outcome,
        "httpStatus": row.http_status, "message": row.message, "traceId": row.trace_id,
        "latencyMs": row.latency_ms, "viewsCovered": row.views_covered,
        "requestId": row.request_id,
    }


def replay(engine: Engine, filters: LogFilter, *, now: dt.datetime) -> int:
    """Re-queue dead documents matching ``filters``; return how many (0 when run again).

    ``outcome`` matches the reason it died (``permanent``, ``expired``); the time range
    matches when it died. The replayed send covers every view the dead one covered.
    """
    d = documents.c
    stmt = documents.update().where(d.status == DEAD)
    if filters.location_id:
        stmt = stmt.where(d.location_id == filters.location_id)
    if filters.document_id:
        stmt = stmt.where(d.document_id == filters.document_id)
    if filters.outcome:
        stmt = stmt.where(d.dead_reason == filters.outcome)
    if filters.since:
        stmt = stmt.where(d.last_attempt_at >= filters.since)
    if filters.until:
        stmt = stmt.where(d.last_attempt_at < filters.until)
    with engine.begin() as conn:
        return conn.execute(stmt.values(
            status=PENDING, due_at=now, pending_since=now, attempts=0, dead_reason=None,
            failed_seq=d.sent_seq, updated_at=now)).rowcount


def prune(engine: Engine, *, older_than: dt.datetime, batch: int = 5000) -> int:
    """Delete log rows older than ``older_than`` in small batches; return how many."""
    log = delivery_log.c
    total = 0
    while True:
        with engine.begin() as conn:
            ids = sa.select(log.id).where(log.at < older_than).limit(batch)
            deleted = conn.execute(delivery_log.delete().where(
                log.id.in_(ids.scalar_subquery()))).rowcount
        total += deleted
        if deleted < batch:
            return total
