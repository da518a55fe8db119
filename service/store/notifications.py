"""Delivering operator notifications: one delivery per (notification, destination), leased
the way documents are, and one row per attempt.

``outbox.py`` writes the notifications. A sender (``service/forward/notify.py``) fans each
out to the destinations configured when it is sent (``fan_out``), leases what is due
(``claim``: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, the write lock on SQLite, so several
forwarders never post one delivery at once), and records what each POST got (``record``).
A destination is a digest of its URL, never the URL: a URL may carry a secret.

Delivery states: pending (due at ``next_attempt_at``; leased while ``locked_until`` holds)
-> delivered | failed (gave up: too old, or the destination is no longer configured).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .db import no_token_alerts, notification_attempts, notification_deliveries, notifications
from .engine import dialect_insert, read_only

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
ERROR_LIMIT = 200

n, dl, at = notifications.c, notification_deliveries.c, notification_attempts.c


def destination_key(url: str) -> str:
    """The stored name of an ``OPERATOR_WEBHOOK_URLS`` entry: a digest, not the URL."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Delivery:
    """A leased delivery: post ``payload`` (exactly these bytes are signed) to one URL."""

    id: int
    message_id: str
    type: str
    location_id: str
    payload: str
    destination: str
    host: str
    attempts: int
    created_at: dt.datetime
    lease_token: str


@dataclass(frozen=True)
class Attempt:
    """What one POST got; ``record`` applies it."""

    outcome: str  # delivered | retry | failed
    http_status: int | None = None
    error: str | None = None
    latency_ms: int | None = None
    next_attempt_at: dt.datetime | None = None  # for retry


def fan_out(engine: Engine, destinations: Mapping[str, str], *, now: dt.datetime,
            max_age: dt.timedelta, batch: int = 100) -> int:
    """Make one pending delivery per destination (key -> host) for each notification not
    yet fanned out; one older than ``max_age`` gets none. Return the notifications done."""
    waiting = sa.select(n.id, n.created_at).where(n.fanned_out_at.is_(None))
    with read_only(engine) as conn:
        if conn.execute(waiting.limit(1)).first() is None:
            return 0  # the usual case: no write transaction (SQLite's lock) for nothing
    query = waiting.order_by(n.id).limit(batch)
    if engine.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    with engine.begin() as conn:
        rows = conn.execute(query).all()
        fresh = [row.id for row in rows if now - row.created_at < max_age]
        if fresh and destinations:
            conn.execute(dialect_insert(notification_deliveries, conn.dialect.name).values([
                {"notification_id": row_id, "destination": key, "host": host[:255],
                 "status": PENDING, "attempts": 0, "next_attempt_at": now}
                for row_id in fresh for key, host in destinations.items()
            ]).on_conflict_do_nothing())
        if rows:
            conn.execute(notifications.update().where(n.id.in_([row.id for row in rows]))
                         .values(fanned_out_at=now))
    return len(rows)


def claim(engine: Engine, *, now: dt.datetime, limit: int,
          lease: dt.timedelta) -> list[Delivery]:
    """Lease up to ``limit`` due deliveries; other senders skip them until the lease ends."""
    due = (sa.select(dl.id).where(dl.status == PENDING, dl.next_attempt_at <= now)
           .where(sa.or_(dl.locked_until.is_(None), dl.locked_until <= now))
           .order_by(dl.next_attempt_at).limit(limit))
    with read_only(engine) as conn:
        if conn.execute(due.limit(1)).first() is None:
            return []
    if engine.dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    token = secrets.token_hex(16)
    with engine.begin() as conn:
        ids = conn.execute(due).scalars().all()
        if not ids:
            return []
        conn.execute(notification_deliveries.update().where(dl.id.in_(ids))
                     .values(locked_until=now + lease, lease_token=token))
        rows = conn.execute(
            sa.select(dl.id, dl.destination, dl.host, dl.attempts, n.message_id, n.type,
                      n.location_id, n.payload, n.created_at)
            .join_from(notification_deliveries, notifications, dl.notification_id == n.id)
            .where(dl.id.in_(ids)).order_by(dl.next_attempt_at, dl.id)).all()
    return [Delivery(id=r.id, message_id=r.message_id, type=r.type, location_id=r.location_id,
                     payload=r.payload, destination=r.destination, host=r.host,
                     attempts=r.attempts, created_at=r.created_at, lease_token=token)
            for r in rows]


def record(engine: Engine, results: Sequence[tuple[Delivery, Attempt]], *,
           now: dt.datetime) -> list[bool]:
    """Record each attempt and apply it to its delivery, in one transaction. Returns, per
    pair, whether the lease was still ours (if not, only the attempt row is added)."""
    kept = []
    with engine.begin() as conn:
        for delivery, attempt in results:
            error = attempt.error if attempt.error is None else attempt.error[:ERROR_LIMIT]
            values = {"locked_until": None, "lease_token": None, "last_attempt_at": now,
                      "last_status": attempt.http_status, "last_error": error,
                      "attempts": dl.attempts + 1}
            if attempt.outcome == "delivered":
                values.update(status=DELIVERED, delivered_at=now)
            elif attempt.outcome == "failed":
                values.update(status=FAILED)
            else:
                values.update(next_attempt_at=attempt.next_attempt_at or now)
            kept.append(bool(conn.execute(notification_deliveries.update().where(
                dl.id == delivery.id, dl.lease_token == delivery.lease_token
            ).values(**values)).rowcount))
            conn.execute(notification_attempts.insert().values(
                delivery_id=delivery.id, at=now, outcome=attempt.outcome,
                http_status=attempt.http_status, error=error,
                latency_ms=attempt.latency_ms))
    return kept


def recent(engine: Engine, *, location_id: str | None = None, limit: int = 50) -> list[dict]:
    """The newest notifications (of one location, or all), each with its deliveries and
    their attempts."""
    query = sa.select(notifications).order_by(n.id.desc()).limit(limit)
    if location_id is not None:
        query = query.where(n.location_id == location_id)
    with read_only(engine) as conn:
        rows = conn.execute(query).all()
        found = conn.execute(sa.select(notification_deliveries).where(
            dl.notification_id.in_([row.id for row in rows])).order_by(dl.id)).all()
        tried = conn.execute(sa.select(notification_attempts).where(
            at.delivery_id.in_([d.id for d in found])).order_by(at.id)).all()
    history: dict[int, list[dict]] = {}
    for a in tried:
        history.setdefault(a.delivery_id, []).append({
            "at": a.at, "outcome": a.outcome, "httpStatus": a.http_status, "error": a.error,
            "latencyMs": a.latency_ms})
    by_row: dict[int, list[dict]] = {}
    for d in found:
        by_row.setdefault(d.notification_id, []).append({
            "host": d.host, "status": d.status, "attempts": d.attempts,
            "lastStatus": d.last_status, "lastError": d.last_error,
            "lastAttemptAt": d.last_attempt_at, "deliveredAt": d.delivered_at,
            "history": history.get(d.id, [])})
    return [{"id": row.message_id, "type": row.type, "locationId": row.location_id,
             "createdAt": row.created_at, "payload": row.payload,
             "deliveries": by_row.get(row.id, [])} for row in rows]


def prune(engine: Engine, *, older_than: dt.datetime, batch: int = 1000) -> int:
    """Delete notifications created before ``older_than`` (their deliveries and attempts
    first), a batch per transaction; return how many."""
    return _delete(engine, n.created_at < older_than, batch)


def purge_location(engine: Engine, location_id: str, *, batch: int = 1000) -> int:
    """Delete a location's notifications, deliveries, attempts and no-token episode."""
    with engine.begin() as conn:
        conn.execute(no_token_alerts.delete().where(
            no_token_alerts.c.location_id == location_id))
    return _delete(engine, n.location_id == location_id, batch)


def _delete(engine: Engine, where, batch: int) -> int:
    total = 0
    while True:
        with engine.begin() as conn:
            ids = conn.execute(sa.select(n.id).where(where).limit(batch)).scalars().all()
            if ids:
                deliveries = sa.select(dl.id).where(dl.notification_id.in_(ids))
                conn.execute(notification_attempts.delete().where(
                    at.delivery_id.in_(deliveries)))
                conn.execute(notification_deliveries.delete().where(
                    dl.notification_id.in_(ids)))
                total += conn.execute(notifications.delete().where(n.id.in_(ids))).rowcount
        if len(ids) < batch:
            return total
