"""Writing views: a group of requests' views recorded in one transaction.

A group is the views of one request, or of several concurrent requests that share a
commit (``groupcommit.GroupCommitter``). The work is split so that little happens while
the transaction (on SQLite: the database's one write lock) is open:

- ``prepare`` runs in the request's own thread, before it joins a group: it gives each
  view its id and its row (times already in the form the database takes).
- ``write`` runs inside the transaction, on a DB-API cursor (SQLAlchemy's constructs and
  result processing cost more than the database's own work here). It looks up the
  eventIds the group carries (idempotency, per location) only when it carries some; adds
  a client's repeats in the window to the row it stored (``clients.RecentClients``, found
  by ``prepare``), which are not new views of the document; it upserts each
  ``documents`` row the group touches once, counting all of its views (``views_seq +
  k``, the new count giving every view's sequence number in arrival order); and inserts
  the ``events`` rows. On PostgreSQL all of it is ONE statement taking the rows as JSON
  parameters (one round trip, whatever the group's size: each round trip hands the GIL
  over while the transaction is open). On SQLite each step is ONE statement with a row of
  VALUES per document or view (a JSON parameter read with json_extract cost several
  times more CPU there), and the counts are read back as one JSON row rather than
  RETURNING's row per document: every row a cursor steps through hands the GIL over,
  while the write lock is held. The statements are in ``view_sql``.

The result is what a view-by-view write would give: the same sequence numbers, the same
``coalesced`` flags, ``due_at`` / ``pending_since`` from the earliest view of a document
that reopened it and ``updated_at`` / ``last_request_id`` from its latest.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import sqlalchemy as sa

from .clients import RecentClients, client_key, retain_ip
from .documents import REOPENED_STATES
from .viewrows import (
    Accepted,
    IdempotencyConflict,
    Prepared,
    Row,
    View,
    chunks,
    event_id_at,
    sort_group,
)

__all__ = ["Accepted", "IdempotencyConflict", "Prepared", "View", "ViewWriter"]


class ViewWriter:
    """Record groups of views (see the module doc); what differs by database is in the
    subclasses in ``writers`` (one per dialect), behind the hooks at the end."""

    seen_sql: str  # the eventIds look-up, in the dialect's parameter style
    add_views_sql: str  # a client's repeats added to its row

    def __init__(self, dialect: sa.Dialect, *, window: int = 60, retain_ip: str = "full"):
        self._dbapi_error = dialect.loaded_dbapi.Error
        self._window = window  # seconds; 0: repeats are never folded
        self._retain_ip = retain_ip
        self.recent = RecentClients()

    # -- in the request's thread -------------------------------------------------------

    def prepare(self, views: Sequence[View], now: dt.datetime) -> Prepared:
        """Give each view its id and its row (no database work)."""
        received = self._time(now)
        window_start = int(now.timestamp()) // self._window if self._window > 0 else None
        out, known = [], {}
        for view in views:
            event_id = event_id_at(now)  # time-ordered: new ids append to the index
            viewed = received if view.viewed_at is now else self._time(view.viewed_at)
            ip = retain_ip(view.ip, self._retain_ip)  # before anything is stored
            key = None
            if view.event_key is None and window_start is not None:
                key = client_key(kind=view.kind, location_id=view.location_id,
                                 document_id=view.document_id, ip=ip,
                                 user_agent=view.user_agent)
                stored = self.recent.get(window_start, key) if key else None
                if stored is not None:
                    known[key] = stored
            row = Row(event_id, view.event_key, view.kind, view.location_id,
                      view.document_id, viewed, received, view.source, view.user_agent, ip,
                      view.verdict, view.verdict_reason, view.forward, view.request_id, key)
            out.append((view, row))
        return Prepared(tuple(out), window_start, known)

    def remember(self, prepared: Prepared, answers: list[Accepted]) -> None:
        """Note the rows ``prepared``'s clients stored (once committed), so that their
        repeats in the window fold into them."""
        if prepared.window is None:
            return
        rows = {row.client: answer.id for (_, row), answer in zip(prepared.views, answers,
                                                                   strict=True)
                if row.client is not None and not answer.repeat}
        if rows:
            self.recent.remember(prepared.window, rows)

    def _time(self, value: dt.datetime | None):
        """A time as the dialect's statements take it (``_format_time``)."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return self._format_time(value)

    # -- inside the transaction ----------------------------------------------------------

    def write(self, cur, group: Sequence[Prepared]) -> list[list[Accepted] | Exception]:
        """Record every request of ``group`` with the DB-API cursor ``cur``, inside its
        transaction; an answer list per request, or the ``IdempotencyConflict`` that
        refuses that request whole (nothing of it is written).

        A view whose ``event_key`` its location used before (earlier, or earlier in the
        group) for the same document is answered ``duplicate`` with the first event's id
        and changes nothing. A client's repeat in the window adds to its row's ``views``.
        """
        keys = [(v.location_id, v.event_key) for prep in group for v, _ in prep.views
                if v.event_key is not None]
        seen = self._seen(cur, keys) if keys else {}
        known = {key: event_id for prep in group for key, event_id in prep.known.items()}
        rows, answers, repeats, folded = sort_group(group, seen, known)
        for event_id, n in folded.items():
            self._execute(cur, self.add_views_sql, (n, event_id))
        if not rows:
            return answers
        # Each document's views in this group: how many, the first and the last arrival.
        docs: dict[tuple, list] = {}  # (kind, location, document) -> [n, first, last, rid]
        for _, row in rows:
            if row.forward:
                doc = docs.get(row.doc)
                if doc is None:
                    docs[row.doc] = [1, row.received_at, row.received_at, row.request_id]
                else:
                    doc[0] += 1
                    doc[2], doc[3] = row.received_at, row.request_id
        # Sorted: every writer locks rows in one order, so two never deadlock.
        params = [(*key, *doc) for key, doc in sorted(docs.items())]
        counted = self._count(cur, params, rows, docs, repeats)
        seqs = {}  # document -> [row id, next sequence number, last sent or failed]
        for row_id, kind, location_id, document_id, views_seq, sent, failed, status in counted:
            n, first = docs[(kind, location_id, document_id)][:2]
            seqs[(kind, location_id, document_id)] = [row_id, views_seq - n + 1,
                                                      max(sent, failed)]
            if status in REOPENED_STATES:
                self._reopen(cur, row_id, first)
        # Sequence numbers in arrival order; the events rows; the answers.
        numbered, coalesced = [], []
        for _, row in rows:
            document_row = seq = None
            if row.forward:
                doc = seqs[row.doc]
                document_row, seq = doc[0], doc[1]
                doc[1] += 1
                coalesced.append(seq - doc[2] > 1)  # views sent or failed left one waiting
            else:
                coalesced.append(False)
            numbered.append((document_row, seq))
        self._insert(cur, rows, numbered, repeats)
        return [out if isinstance(out, Exception) else
                [a if isinstance(a, Accepted) else
                 Accepted(rows[a][1].id, "queued" if rows[a][0].forward else "filtered",
                          coalesced=coalesced[a]) for a in out] for out in answers]

    def _seen(self, cur, keys: list[tuple[str, str]]) -> dict[tuple, tuple]:
        """(location, eventId) -> (id, kind, document) of the events already stored."""
        seen: dict[tuple, tuple] = {}
        for location_id, key, event_id, kind, document_id in self._pairs(
                cur, self.seen_sql, keys):
            seen[(location_id, key)] = (event_id, kind, document_id)
        return seen

    def _pairs(self, cur, sql: str, pairs: list[tuple[str, str]]) -> list[tuple]:
        """Run a look-up of (location, key) pairs, 500 at a time."""
        found: list[tuple] = []
        for chunk in chunks(list(dict.fromkeys(pairs)), 500):
            found.extend(self._execute(cur, sql, self._pair_params(chunk), fetch=True))
        return found

    # -- what each dialect does its own way (``writers``) ----------------------------------

    def _format_time(self, value: dt.datetime):
        raise NotImplementedError

    def _pair_params(self, pairs: list[tuple[str, str]]) -> tuple:
        """(location, key) pairs as the look-up statements take them."""
        raise NotImplementedError

    def _count(self, cur, params: list[tuple], rows: list, docs: dict,
               repeats: list[int]) -> list:
        """Count the group's views of each document (``params``: UPSERT_KEYS each) and
        return the counts (``view_sql.COUNTS`` each)."""
        raise NotImplementedError

    def _reopen(self, cur, row_id: int, first) -> None:
        """Reopen an idle or dead document that got views (``documents.REOPEN``)."""
        raise NotImplementedError

    def _insert(self, cur, rows: list, numbered: list[tuple], repeats: list[int]) -> None:
        """Store the new events rows, each with its (document row, sequence number)."""
        raise NotImplementedError

    def _execute(self, cur, sql: str, params, *, fetch: bool = False):
        """Run one statement; a driver error becomes SQLAlchemy's (IntegrityError,
        OperationalError, ...), as on the rest of the store's paths."""
        try:
            cur.execute(sql, params)
            return cur.fetchall() if fetch else None
        except self._dbapi_error as exc:
            raise sa.exc.DBAPIError.instance(sql, None, exc, self._dbapi_error,
                                             hide_parameters=True) from exc
