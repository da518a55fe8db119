"""Operator notifications, written in the transaction of the change they report.

A transactional outbox: each function here inserts on the caller's connection, so a
notification commits or rolls back with its transition; none is lost and none invented.
The forwarder's sender (``service/forward/notify.py``) posts them later, to every
``OPERATOR_WEBHOOK_URLS`` entry (``notifications.py`` keeps their delivery state). Rows are
written whether or not URLs are set: they are the record of what broke, and are pruned with
the delivery log.

A payload has Standard Webhooks' shape, ``{"type", "timestamp", "data": {"locationId",
...}}``, and never holds a token:

  token.invalid      a location's token became unusable      ``token_invalid`` (the vault)
  views.dead         documents went dead in a batch of sends ``views_dead`` (apply_outcomes)
  location.no_token  views parked without a usable token for longer than
                     NO_TOKEN_ALERT_MINUTES, once per episode ``alert_no_token`` (forwarder)
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections import Counter
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .db import documents, locations, no_token_alerts, notifications
from .engine import dialect_insert, read_only

TOKEN_INVALID, VIEWS_DEAD, NO_TOKEN = "token.invalid", "views.dead", "location.no_token"
TYPES = (TOKEN_INVALID, VIEWS_DEAD, NO_TOKEN)
MAX_DOCUMENTS = 50  # documents named in one views.dead (the count covers them all)
MESSAGE_LIMIT = 200


def iso(at: dt.datetime) -> str:
    """``2026-01-05T12:00:00.000Z``: Standard Webhooks' timestamp form."""
    return at.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def clip(text: str | None) -> str | None:
    if text is None or len(text) <= MESSAGE_LIMIT:
        return text
    return text[: MESSAGE_LIMIT - 1] + "…"


def emit(conn, type_: str, location_id: str, data: dict, *, now: dt.datetime,
         dedup_key: str | None = None) -> bool:
    """Insert one notification in the caller's transaction; return whether it was added
    (a ``dedup_key`` already stored adds nothing)."""
    payload = {"type": type_, "timestamp": iso(now), "data": {"locationId": location_id, **data}}
    statement = dialect_insert(notifications, conn.dialect.name).values(
        message_id="msg_" + uuid.uuid4().hex, type=type_, location_id=location_id,
        dedup_key=dedup_key, created_at=now,
        payload=json.dumps(payload, separators=(",", ":"), ensure_ascii=False))
    return bool(conn.execute(statement.on_conflict_do_nothing()).rowcount)


def token_invalid(conn, location_id: str, *, reason: str | None, now: dt.datetime) -> bool:
    """token.invalid: the location's token was just marked unusable (call it next to that
    UPDATE). Told once per token stored, however many processes or paths find it invalid."""
    c = locations.c
    row = conn.execute(sa.select(c.token_kind, c.generation, c.created_at)
                       .where(c.location_id == location_id)).first()
    if row is None:
        return False
    key = f"{TOKEN_INVALID}:{location_id}:{iso(row.created_at)}:{row.generation}"
    return emit(conn, TOKEN_INVALID, location_id,
                {"tokenKind": row.token_kind, "reason": clip(reason)}, now=now, dedup_key=key)


def views_dead(conn, results: Sequence[tuple], kept: Sequence[bool], *,
               now: dt.datetime) -> int:
    """views.dead: one notification per location for the ``(claim, outcome)`` pairs of a
    batch that went dead with the lease still held (``kept``); return how many."""
    dead: dict[str, list] = {}
    for (claim, outcome), held in zip(results, kept, strict=True):
        if held and outcome.result == "dead":
            dead.setdefault(claim.location_id, []).append((claim, outcome))
    for location_id, pairs in dead.items():
        emit(conn, VIEWS_DEAD, location_id, {
            "count": len(pairs), "views": sum(claim.views for claim, _ in pairs),
            "reasons": dict(Counter(outcome.outcome for _, outcome in pairs)),
            "documents": [{"kind": claim.kind, "documentId": claim.document_id,
                           "reason": outcome.outcome, "httpStatus": outcome.http_status,
                           "message": clip(outcome.message)}
                          for claim, outcome in pairs[:MAX_DOCUMENTS]],
            "truncated": len(pairs) > MAX_DOCUMENTS,
        }, now=now)
    return len(dead)


def _parked():
    """Per location: its parked documents, their views and since when the oldest waits."""
    d = documents.c
    waiting = sa.case((d.sent_seq > d.failed_seq, d.views_seq - d.sent_seq),
                      else_=d.views_seq - d.failed_seq)
    since = sa.func.min(sa.func.coalesce(d.pending_since, d.updated_at))
    return (sa.select(d.location_id, since.label("since"), sa.func.count().label("documents"),
                      sa.func.sum(waiting).label("views"))
            .where(d.status == "blocked").group_by(d.location_id))


def alert_no_token(engine: Engine, *, now: dt.datetime, after: dt.timedelta) -> list[str]:
    """location.no_token: tell each location whose parked views (no usable token) have
    waited longer than ``after``, once per episode; re-arm those with none parked left.
    Return the locations told. Reads first, and writes only when there is a change."""
    with read_only(engine) as conn:
        due, recovered = _changes(conn, now=now, after=after)
    if not due and not recovered:
        return []
    told = []
    with engine.begin() as conn:  # decided again under the write lock: it may have changed
        due, recovered = _changes(conn, now=now, after=after)
        if recovered:
            conn.execute(no_token_alerts.delete().where(
                no_token_alerts.c.location_id.in_(recovered)))
        for row in due:
            claimed = dialect_insert(no_token_alerts, conn.dialect.name).values(
                location_id=row.location_id, waiting_since=row.since, notified_at=now)
            if not conn.execute(claimed.on_conflict_do_nothing()).rowcount:
                continue  # another forwarder told it first
            emit(conn, NO_TOKEN, row.location_id, {
                "waitingSince": iso(row.since), "documents": row.documents,
                "views": int(row.views or 0),
                "thresholdMinutes": int(after.total_seconds() // 60)}, now=now)
            told.append(row.location_id)
    return told


def _changes(conn, *, now: dt.datetime, after: dt.timedelta) -> tuple[list, list[str]]:
    """The locations parked longer than ``after`` and not yet told; those told whose
    parked views are all gone."""
    parked = _parked().subquery()
    told = sa.select(no_token_alerts.c.location_id)
    due = conn.execute(sa.select(parked).where(parked.c.since <= now - after)
                       .where(parked.c.location_id.not_in(told))).all()
    recovered = conn.execute(told.where(no_token_alerts.c.location_id.not_in(
        sa.select(parked.c.location_id)))).scalars().all()
    return due, list(recovered)
