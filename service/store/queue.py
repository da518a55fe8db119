"""The durable queue: record views (coalesced per document), claim due ones, record outcomes.

Every state change is one transaction (``with engine.begin()``). Nothing here knows
about Flask or HTTP. Times are passed in (``now``) so tests drive the clock.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import secrets
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from ..highlevel.client import RateLimit
from .db import (
    delivery_log,
    documents,
    events,
    installs,
    locations,
    read_only,
)
from .groupcommit import GroupCommitter
from .outcomes import BLOCKED, PENDING, record_outcomes
from .ratelimit import NoLimit
from .recording import Accepted, IdempotencyConflict, Prepared, View, ViewWriter
from .write_connection import WriteConnection


@dataclass(frozen=True)
class Claim:
    """A leased document: send one PATCH covering views (seq_from, seq_to]."""

    row_id: int
    kind: str
    location_id: str
    document_id: str
    seq_from: int
    seq_to: int
    attempts: int
    pending_since: dt.datetime
    lease_token: str
    request_id: str | None = None

    @property
    def views(self) -> int:
        return self.seq_to - self.seq_from


@dataclass(frozen=True)
class Outcome:
    """What the forwarder decided after one attempt; the store applies it."""

    result: str  # delivered | retry | dead | blocked
    outcome: str  # the delivery-log label: delivered, retry, rate_limited, permanent, ...
    http_status: int | None = None
    message: str | None = None
    trace_id: str | None = None
    latency_ms: int | None = None
    next_due: dt.datetime | None = None  # for retry
    spend_attempt: bool = True  # a 429 does not spend the retry budget
    rate_limit: RateLimit = field(default_factory=RateLimit)  # what HighLevel's headers said
    retry_after: float | None = None


class Store:
    """Queue operations over one SQLAlchemy engine (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine, *, coalesce_window: int = 60, lease_seconds: int = 120,
                 limiter=None, group_commit: bool = False, retain_ip: str = "full"):
        self.engine = engine
        self.limiter = limiter or NoLimit()
        self.window = dt.timedelta(seconds=coalesce_window)
        self.lease = dt.timedelta(seconds=lease_seconds)
        self.dialect = engine.dialect.name
        self._writer = ViewWriter(engine.dialect, window=coalesce_window, retain_ip=retain_ip)
        # Web processes share commits between concurrent requests (one fsync for many),
        # on a connection of their own (see write_connection).
        self._committer = None
        if group_commit:
            self._write_connection = WriteConnection(engine)
            self._committer = GroupCommitter(self._write_connection.begin,
                                             self._writer.write, self._record_alone,
                                             sync=self._write_connection.sync)

    # -- ingest ---------------------------------------------------------------

    def record_views(self, views: Sequence[View], *, now: dt.datetime) -> list[Accepted]:
        """Store ``views`` in one transaction (all or nothing); return an id and status each.

        A view whose ``event_key`` its location used before for the same document is
        answered ``duplicate`` with the first event's id and changes nothing; a client's
        repeat of a view within the coalescing window is counted on the row it stored.

        :raises IdempotencyConflict: an ``event_key`` the location used for another
            document; nothing of ``views`` is stored.
        """
        prepared = self._writer.prepare(views, now)
        if self._committer is not None:
            answer = self._committer.submit(prepared, size=len(views))
        else:
            answer = self._record_alone(prepared)
        if isinstance(answer, IdempotencyConflict):
            raise answer
        self._writer.remember(prepared, answer)  # committed: its clients' repeats fold
        return answer

    def _record_alone(self, prepared: Prepared) -> list[Accepted] | IdempotencyConflict:
        for attempt in range(3):
            try:
                with self.engine.begin() as conn, \
                        contextlib.closing(conn.connection.dbapi_connection.cursor()) as cur:
                    return self._writer.write(cur, [prepared])[0]
            except IntegrityError:
                # Two requests raced on one new eventId (PostgreSQL): the loser's
                # transaction is rolled back whole; on retry it finds the winner's row.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    # -- forwarding -----------------------------------------------------------

    def claim_due(self, *, now: dt.datetime, limit: int) -> list[Claim]:
        """Lease up to ``limit`` due documents; others skip them until the lease ends.

        Documents of a resource whose rate-limit budget is spent are skipped, and each
        claimed document takes one send from its resource's budget.
        """
        d = documents.c
        due = (
            sa.select(d.id, d.location_id)
            .where(d.status == PENDING, d.due_at <= now)
            .where(sa.or_(d.locked_until.is_(None), d.locked_until <= now))
            .order_by(d.due_at)
            .limit(limit)
        )
        paused = self.limiter.paused_resources(now)
        if paused is not None:
            due = due.where(d.location_id.not_in(paused))
        if self.dialect == "postgresql":
            # SKIP LOCKED: forwarders never wait on each other's rows. SQLite's
            # BEGIN IMMEDIATE serialises claims instead.
            due = due.with_for_update(of=documents, skip_locked=True)
        token = secrets.token_hex(16)
        with self.engine.begin() as conn:
            rows = conn.execute(due).all()
            budget = self.limiter.reserve_many(
                conn, Counter(r.location_id for r in rows), now=now)
            ids = []
            for row in rows:
                if budget.get(row.location_id, 0) > 0:
                    budget[row.location_id] -= 1
                    ids.append(row.id)
            if not ids:
                return []
            conn.execute(
                documents.update()
                .where(d.id.in_(ids))
                .values(locked_until=now + self.lease, lease_token=token,
                        claimed_seq=d.views_seq, updated_at=now)
            )
            rows = conn.execute(sa.select(documents).where(d.id.in_(ids)).order_by(d.due_at))
            return [
                Claim(row_id=r.id, kind=r.kind, location_id=r.location_id,
                      document_id=r.document_id, seq_from=max(r.sent_seq, r.failed_seq),
                      seq_to=r.claimed_seq, attempts=r.attempts,
                      pending_since=r.pending_since or now, lease_token=token,
                      request_id=r.last_request_id)
                for r in rows
            ]

    def record_outcomes(self, results: Sequence[tuple[Claim, Outcome]], *,
                        now: dt.datetime) -> list[bool]:
        """Apply a batch of outcomes in one transaction (see ``outcomes.record_outcomes``)."""
        with self.engine.begin() as conn:
            return record_outcomes(conn, results, now=now, window=self.window,
                                   limiter=self.limiter)

    def release(self, claims: Iterable[Claim], *, now: dt.datetime) -> None:
        """Give back leases that were not attempted (shutdown), due at once."""
        d = documents.c
        with self.engine.begin() as conn:
            for claim in claims:
                conn.execute(
                    documents.update()
                    .where(d.id == claim.row_id, d.lease_token == claim.lease_token)
                    .values(locked_until=None, lease_token=None, updated_at=now)
                )

    def block_location(self, location_id: str, *, now: dt.datetime) -> int:
        """Park a location's pending views (token missing or invalid); return how many."""
        d = documents.c
        with self.engine.begin() as conn:
            return conn.execute(
                documents.update()
                .where(d.location_id == location_id, d.status == PENDING)
                .where(sa.or_(d.locked_until.is_(None), d.locked_until <= now))
                .values(status=BLOCKED, updated_at=now)
            ).rowcount

    def unblock(self, *, now: dt.datetime, location_id: str | None = None) -> int:
        """Make blocked views due again where the location now has an active token."""
        d = documents.c
        usable = sa.select(locations.c.location_id).where(locations.c.status == "active")
        # ...or whose company's agency token can mint one (installed under that company).
        agencies = sa.select(locations.c.location_id).where(
            locations.c.status == "active", locations.c.token_kind == "agency")
        mintable = sa.select(installs.c.target_id).where(
            installs.c.target_type == "location", installs.c.status == "installed",
            installs.c.company_id.in_(agencies))
        usable = sa.union(usable, mintable)
        stmt = documents.update().where(d.status == BLOCKED, d.location_id.in_(usable))
        if location_id is not None:
            stmt = stmt.where(d.location_id == location_id)
        # Parking must not skip the coalescing window: due at its end at the earliest.
        due = sa.case((sa.and_(d.quiet_until.is_not(None), d.quiet_until > now), d.quiet_until),
                      else_=now)
        with self.engine.begin() as conn:
            return conn.execute(stmt.values(status=PENDING, due_at=due, updated_at=now)).rowcount

    # -- reads ----------------------------------------------------------------

    def event_status(self, event_id: str) -> dict | None:
        """Return one event and where its view stands (queued, delivered, failed, filtered)."""
        e, d = events.c, documents.c
        with read_only(self.engine) as conn:
            row = conn.execute(
                sa.select(events, d.status.label("doc_status"), d.sent_seq, d.failed_seq,
                          d.dead_reason, d.last_error)
                .select_from(events.outerjoin(documents, e.document_row == d.id))
                .where(e.id == event_id)
            ).first()
            if row is None:
                return None
            result = {
                "id": row.id, "eventId": row.event_key, "kind": row.kind,
                "locationId": row.location_id, "documentId": row.document_id,
                "viewedAt": row.viewed_at, "receivedAt": row.received_at,
                "source": row.source, "verdict": row.verdict,
                "verdictReason": row.verdict_reason, "deliveredAt": None,
            }
            if not row.forward:
                result["status"] = "filtered"
            elif row.seq <= row.sent_seq:
                result["status"] = "delivered"
                result["deliveredAt"] = conn.execute(
                    sa.select(sa.func.min(delivery_log.c.at)).where(
                        delivery_log.c.document_row == row.document_row,
                        delivery_log.c.outcome == "delivered",
                        delivery_log.c.seq_to >= row.seq,
                    )
                ).scalar()
            elif row.seq <= row.failed_seq:
                result["status"] = "failed"
                result["reason"] = row.dead_reason
                result["message"] = row.last_error
            else:
                result["status"] = "queued"
                result["reason"] = "blocked" if row.doc_status == BLOCKED else None
            return result

    def queue_depth(self) -> dict[str, int]:
        """Count document rows by status."""
        d = documents.c
        with read_only(self.engine) as conn:
            rows = conn.execute(sa.select(d.status, sa.func.count()).group_by(d.status))
            return {status: count for status, count in rows}

    def location_stats(self, location_id: str) -> dict[str, dict[str, int]]:
        """Count a location's documents by status and its views by verdict."""
        d, e = documents.c, events.c
        with read_only(self.engine) as conn:
            docs = conn.execute(
                sa.select(d.status, sa.func.count())
                .where(d.location_id == location_id).group_by(d.status)
            )
            verdicts = conn.execute(
                sa.select(e.verdict, sa.func.sum(e.views))
                .where(e.location_id == location_id).group_by(e.verdict)
            )
            return {"documents": dict(docs.all()),
                    "verdicts": {verdict: int(n) for verdict, n in verdicts}}
