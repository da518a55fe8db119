"""The delivery log (one row per attempt): reading it, filtering it, pruning it."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .db import delivery_log
from .engine import read_only

# What an attempt's ``outcome`` can be (the forwarder's labels: ``forward.forwarder``).
OUTCOMES = ("delivered", "retry", "rate_limited", "network_error", "unauthorized",
            "permanent", "expired", "no_token", "token_invalid", "token_unreadable")


@dataclass(frozen=True)
class LogFilter:
    location_id: str | None = None
    document_id: str | None = None
    outcome: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    def empty(self) -> bool:
        return not any(vars(self).values())


def matching(stmt, filters: LogFilter, *, table: sa.Table, outcome, at):
    """Add the filter's conditions to ``stmt`` (its outcome and time columns differ)."""
    conditions = [
        (filters.location_id, lambda v: table.c.location_id == v),
        (filters.document_id, lambda v: table.c.document_id == v),
        (filters.outcome, lambda v: outcome == v),
        (filters.since, lambda v: at >= v),
        (filters.until, lambda v: at < v),
    ]
    for value, condition in conditions:
        if value:
            stmt = stmt.where(condition(value))
    return stmt


def list_deliveries(engine: Engine, filters: LogFilter, *, limit: int = 100,
                    before: int | None = None) -> tuple[list[dict], int | None]:
    """Return attempts newest first, and the cursor for the next page (None at the end)."""
    log = delivery_log.c
    query = matching(sa.select(delivery_log).order_by(log.id.desc()).limit(limit + 1),
                      filters, table=delivery_log, outcome=log.outcome, at=log.at)
    if before is not None:
        query = query.where(log.id < before)
    with read_only(engine) as conn:
        rows = conn.execute(query).all()
    page = [as_attempt(row) for row in rows[:limit]]
    return page, (rows[limit - 1].id if len(rows) > limit else None)


def as_attempt(row) -> dict:
    return {
        "id": row.id, "at": row.at, "kind": row.kind, "locationId": row.location_id,
        "documentId": row.document_id, "attempt": row.attempt, "outcome": row.outcome,
        "httpStatus": row.http_status, "message": row.message, "traceId": row.trace_id,
        "latencyMs": row.latency_ms, "viewsCovered": row.views_covered,
        "requestId": row.request_id,
    }


def prune(engine: Engine, *, older_than: dt.datetime, batch: int = 5000) -> int:
    """Delete log rows older than ``older_than`` in small batches; return how many."""
    log = delivery_log.c
    oldest = sa.select(log.id).where(log.at < older_than).order_by(log.at).limit(batch)
    total = 0
    while True:
        with engine.begin() as conn:
            # The ids first, then a delete by primary key: as one statement
            # (``id IN (SELECT ... LIMIT)``) PostgreSQL hash-joined the subquery against
            # a scan of the whole log, for every batch (bench/growth.py).
            ids = conn.execute(oldest).scalars().all()
            deleted = conn.execute(delivery_log.delete().where(
                log.id.in_(ids))).rowcount if ids else 0
        total += deleted
        if deleted < batch:
            return total
