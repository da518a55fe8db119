"""Applying send outcomes to the queue: one transaction for a whole batch.

The statements are built once with bind parameters: building SQLAlchemy constructs
per send cost more CPU than the send itself. A batch of outcomes is one commit (one
fsync on SQLite) and one rate-limit update per resource, not one per send.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import sqlalchemy as sa

from .db import UTCDateTime, delivery_log, documents

# Document row states (the store's queue).
PENDING, IDLE, BLOCKED, DEAD = "pending", "idle", "blocked", "dead"

d = documents.c
_now = sa.bindparam("now_at", type_=UTCDateTime())
_quiet = sa.bindparam("quiet_at", type_=UTCDateTime())
_seq_to = sa.bindparam("seq_to", type_=sa.Integer())
_newer = d.views_seq > _seq_to  # views arrived while the send was in flight
_common = {
    "locked_until": None, "lease_token": None, "updated_at": _now, "last_attempt_at": _now,
    "last_status": sa.bindparam("http_status", type_=sa.Integer()),
    "last_error": sa.bindparam("error_text", type_=sa.String()),
}
_mine = sa.and_(d.id == sa.bindparam("row_id"), d.lease_token == sa.bindparam("lease"))

STATEMENTS = {
    "delivered": documents.update().where(_mine).values(
        **_common, sent_seq=_seq_to, attempts=0, last_sent_at=_now, dead_reason=None,
        quiet_until=_quiet, due_at=_quiet,
        status=sa.case((_newer, PENDING), else_=IDLE),
        pending_since=sa.case((_newer, _now), else_=sa.null())),
    "retry": documents.update().where(_mine).values(
        **_common, status=PENDING,
        due_at=sa.bindparam("next_due_at", type_=UTCDateTime()),
        attempts=d.attempts + sa.bindparam("spent", type_=sa.Integer())),
    "dead": documents.update().where(_mine).values(
        **_common, failed_seq=_seq_to, attempts=0, quiet_until=_quiet, due_at=_quiet,
        dead_reason=sa.bindparam("reason_text", type_=sa.String()),
        status=sa.case((_newer, PENDING), else_=DEAD),
        pending_since=sa.case((_newer, _now), else_=d.pending_since)),
    "blocked": documents.update().where(_mine).values(**_common, status=BLOCKED, due_at=_now),
}
LOG_INSERT = delivery_log.insert()


def record_outcomes(conn, results: Sequence, *, now: dt.datetime,
                    window: dt.timedelta, limiter) -> list[bool]:
    """Apply ``(claim, outcome)`` pairs in the caller's transaction; log each attempt.

    Returns, per pair, whether the lease was still ours (a late answer after the lease
    ended changes nothing but the log).
    """
    kept = []
    for claim, outcome in results:
        statement = STATEMENTS.get(outcome.result)
        if statement is None:
            raise ValueError(f"unknown result {outcome.result!r}")
        kept.append(bool(conn.execute(statement, {
            "now_at": now, "quiet_at": now + window, "seq_to": claim.seq_to,
            "http_status": outcome.http_status, "row_id": claim.row_id, "lease": claim.lease_token,
            "error_text": None if outcome.result == "delivered" else clip(outcome.message),
            "next_due_at": outcome.next_due or now, "spent": int(outcome.spend_attempt),
            "reason_text": outcome.outcome,
        }).rowcount))
    # The newest answer per resource carries the freshest rate-limit headers.
    latest = {}
    for claim, outcome in results:
        if outcome.http_status is not None:
            latest.setdefault(claim.location_id, []).append(outcome)
    limiter.observe_batch(conn, latest, now=now)
    conn.execute(LOG_INSERT, [{
        "at": now, "document_row": claim.row_id, "kind": claim.kind,
        "location_id": claim.location_id, "document_id": claim.document_id,
        "attempt": claim.attempts + 1, "outcome": outcome.outcome,
        "http_status": outcome.http_status, "message": clip(outcome.message),
        "trace_id": outcome.trace_id, "latency_ms": outcome.latency_ms,
        "views_covered": claim.views, "seq_to": claim.seq_to, "request_id": claim.request_id,
    } for claim, outcome in results])
    return kept


def clip(message: str | None, limit: int = 500) -> str | None:
    return message if message is None or len(message) <= limit else message[: limit - 1] + "…"
