"""The durable queue: record views (coalesced per document), claim due ones, record outcomes.

Every state change is one transaction (``with engine.begin()``). Nothing here knows
about Flask or HTTP. Times are passed in (``now``) so tests drive the clock.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Collection, Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from . import directory, rollup, seen, stats
from . import documents as states
from .claims import Claim, Outcome
from .db import delivery_log, documents, events
from .deliverylog import LogFilter
from .documents import BLOCKED
from .engine import read_only
from .groupcommit import GroupCommitter
from .ratelimit import NoLimit
from .viewrows import Accepted, IdempotencyConflict, Prepared, View
from .write_connection import WriteConnection
from .writers import view_writer


class Store:
    """Queue operations over one SQLAlchemy engine (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine, *, coalesce_window: int = 60, lease_seconds: int = 15,
                 limiter=None, group_commit: bool = False, retain_ip: str = "full"):
        self.engine = engine
        self.limiter = limiter or NoLimit()
        self.window = dt.timedelta(seconds=coalesce_window)
        self.lease = dt.timedelta(seconds=lease_seconds)
        self.dialect = engine.dialect.name
        self._writer = view_writer(engine.dialect, window=coalesce_window, retain_ip=retain_ip)
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
        """Lease up to ``limit`` due documents (``documents.claim``)."""
        with self.engine.begin() as conn:
            return states.claim(conn, now=now, limit=limit, lease=self.lease,
                                limiter=self.limiter, dialect=self.dialect)

    def next_due(self, *, now: dt.datetime) -> dt.datetime | None:
        """The first moment after ``now`` at which a claim may find what it could not at
        ``now``: a pending document coming due, or a rate-limit pause ending (None:
        neither is known). The forwarder sleeps until then rather than polling."""
        d = documents.c
        with read_only(self.engine) as conn:
            due = conn.execute(sa.select(sa.func.min(d.due_at))
                               .where(d.status == states.PENDING, d.due_at > now)).scalar()
            resumes = self.limiter.resumes_at(conn, now)
        return min((at for at in (due, resumes) if at is not None), default=None)

    def renew_leases(self, tokens: Collection[str], *, now: dt.datetime) -> set[int]:
        """Extend the leases held under ``tokens`` to ``now`` + the lease; return the ids of
        the rows still held (``documents.renew``)."""
        with self.engine.begin() as conn:
            return states.renew(conn, tokens, now=now, lease=self.lease)

    def record_outcomes(self, results: Sequence[tuple[Claim, Outcome]], *,
                        now: dt.datetime) -> list[bool]:
        """Apply a batch of outcomes in one transaction (``documents.apply_outcomes``),
        and remember the locations tried (``seen.remember``: the locations directory)."""
        with self.engine.begin() as conn:
            kept = states.apply_outcomes(conn, results, now=now, window=self.window,
                                         limiter=self.limiter)
            seen.remember(conn, (claim.location_id for claim, _ in results), now=now)
            return kept

    def release(self, claims: Iterable[Claim], *, now: dt.datetime) -> None:
        """Give back leases that were not attempted (shutdown), due at once."""
        with self.engine.begin() as conn:
            states.release(conn, claims, now=now)

    def block_location(self, location_id: str, *, now: dt.datetime) -> int:
        """Park a location's pending views (token missing or invalid); return how many."""
        with self.engine.begin() as conn:
            return states.park_location(conn, location_id, now=now)

    def unblock(self, *, now: dt.datetime, location_id: str | None = None) -> int:
        """Make blocked views due again where the location now has an active token."""
        with self.engine.begin() as conn:
            return states.unpark(conn, now=now, location_id=location_id)

    def replay(self, filters: LogFilter, *, now: dt.datetime, dry_run: bool = False) -> int:
        """Re-queue dead documents matching ``filters``; how many (``documents.replay``).
        With ``dry_run``, count what it would re-queue and change nothing."""
        if dry_run:
            with read_only(self.engine) as conn:
                return states.replay(conn, filters, now=now, dry_run=True)
        with self.engine.begin() as conn:
            return states.replay(conn, filters, now=now)

    def fold_stats(self, *, now: dt.datetime) -> int:
        """Fold views and deliveries older than the coalescing window (plus a margin) into
        the overview's hourly counts; return the ranges folded (``rollup.fold``)."""
        return rollup.fold(self.engine, now=now, lag=self.window + rollup.LAG_MARGIN)

    def count_views(self, *, now: dt.datetime) -> int:
        """Count the views of events old enough into each location's views by verdict
        (``seen.count_new``); return how many events were counted."""
        return seen.count_new(
            self.engine, now=now, lag=seen.lag_for(int(self.window.total_seconds())))

    # -- reads ----------------------------------------------------------------

    def overview(self, *, now: dt.datetime) -> dict:
        """Views per hour (24) and per day (30), the queue by state, view-to-delivery
        p50/p99 (``stats.overview``)."""
        return stats.overview(self.engine, now=now)

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

    def list_locations(self, *, state: str | None = None, search: str | None = None,
                       cursor: str | None = None, limit: int = 50,
                       now: dt.datetime) -> tuple[list[dict], str | None]:
        """Return a page of the locations directory (every location with a token or
        views, in id order) and the cursor of the next page (None at the end).

        ``state``: one of ``directory.LOCATION_STATES`` (None: any); ``search``: a
        case-insensitive part of the location id; ``cursor``: the previous page's.
        """
        with read_only(self.engine) as conn:
            ids = directory.page_ids(conn, state=state, search=search, after=cursor or "",
                                     limit=limit + 1, now=now)
            rows = directory.rows_for(conn, ids[:limit], now=now)
        return rows, (ids[limit - 1] if len(ids) > limit else None)

    def attention(self, states, *, limit: int,
                  now: dt.datetime) -> dict[str, tuple[list[dict], bool]]:
        """The first ``limit`` locations of each of ``states`` and whether there are more:
        the overview's lists, read in one transaction with one count of every page's
        locations (five ``list_locations`` calls made five of each)."""
        with read_only(self.engine) as conn:
            ids = {state: directory.page_ids(conn, state=state, search=None, after="",
                                             limit=limit + 1, now=now)
                   for state in states}
            rows = {row["locationId"]: row for row in directory.rows_for(
                conn, sorted({i for page in ids.values() for i in page[:limit]}), now=now)}
        return {state: ([rows[i] for i in page[:limit] if i in rows], len(page) > limit)
                for state, page in ids.items()}

    def location(self, location_id: str, *, now: dt.datetime) -> dict | None:
        """Return a location's directory row with its details (views by verdict, the
        rate-limit budget, the latest attempts); None when nothing is stored for it."""
        with read_only(self.engine) as conn:
            rows = directory.rows_for(conn, [location_id], now=now)
            extra = directory.details(conn, location_id)
        if not rows and not extra["verdicts"]:
            return None
        row = rows[0] if rows else directory.empty_row(location_id)
        return {**row, **extra}

    def queue_depth(self) -> dict[str, int]:
        """Count document rows by status."""
        d = documents.c
        with read_only(self.engine) as conn:
            rows = conn.execute(sa.select(d.status, sa.func.count()).group_by(d.status))
            return {status: count for status, count in rows}
