"""Writing views: the statements that record a group of requests' views in one transaction.

A group is the views of one request, or of several concurrent requests that share a
commit (``groupcommit.GroupCommitter``). Whatever its size, a group costs three
statements: a look-up of the eventIds it carries (idempotency), ONE upsert of the
``documents`` rows it touches (each counting all of its views: ``views_seq + k``,
RETURNING the new count, from which every view's sequence number is given in arrival
order), and ONE insert into ``events``. The upsert and the insert take the whole group as
one parameter (PostgreSQL: an array per column, unnested; SQLite: a JSON array of rows,
read with json_each), so their text is fixed and they run as one call each: building
SQLAlchemy constructs or binding row by row cost more than the database's own work, and
every call is a point where a thread holding SQLite's write lock can lose the GIL.

The result is what a view-by-view write would give: the same sequence numbers, the same
``coalesced`` flags, ``due_at`` / ``pending_since`` from the earliest view of a document
that reopened it and ``updated_at`` / ``last_request_id`` from its latest.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from .db import UTCDateTime, events
from .outcomes import DEAD, IDLE, PENDING

Group = Sequence[tuple[Sequence["View"], dt.datetime]]  # (a request's views, its now)


@dataclass(frozen=True)
class View:
    """One "document viewed" event, validated, as the store takes it."""

    kind: str  # invoice | estimate
    location_id: str
    document_id: str
    viewed_at: dt.datetime
    event_key: str | None = None
    source: str | None = None
    user_agent: str | None = None
    ip: str | None = None
    verdict: str = "human"
    verdict_reason: str | None = None
    forward: bool = True
    request_id: str | None = None


@dataclass(frozen=True)
class Accepted:
    id: str
    status: str  # queued | duplicate | filtered
    coalesced: bool = False  # joined views already waiting for the same document


class _Doc:
    """A document touched by the group: how many views, the first and last of them."""

    __slots__ = ("views", "first", "last", "request_id", "row_id", "next_seq", "done_seq")

    def __init__(self, now: dt.datetime):
        self.views, self.first, self.last, self.request_id = 0, now, now, None


class ViewWriter:
    """Record groups of views with three statements of fixed text (see the module doc)."""

    def __init__(self, dialect: str):
        e = events.c
        self._by_keys = sa.select(e.event_key, e.id).where(
            e.event_key.in_(sa.bindparam("keys", expanding=True)))
        self._pg = dialect == "postgresql"
        self._time = None  # SQLite: db.UTCDateTime's own formatting, set on first use

    def record(self, conn, views: Sequence[View], now: dt.datetime) -> list[Accepted]:
        """Record one request's views in ``conn``'s transaction."""
        return self.record_group(conn, [(views, now)])[0]

    def record_group(self, conn, group: Group) -> list[list[Accepted]]:
        """Record every request of ``group`` in ``conn``'s transaction; a result each.

        A view whose ``event_key`` was seen before (earlier, or earlier in the group) is
        answered ``duplicate`` with the first event's id and changes nothing.
        """
        keys = [v.event_key for views, _ in group for v in views if v.event_key is not None]
        seen: dict[str, str] = {}  # eventId -> id
        for start in range(0, len(keys), 500):
            seen.update(conn.execute(self._by_keys, {"keys": keys[start:start + 500]}).all())
        # First pass: ids, duplicates, and the views each document gets.
        docs: dict[tuple[str, str, str], _Doc] = {}
        plan: list[list[tuple[View, str, _Doc | None] | Accepted]] = []
        for views, now in group:
            steps: list = []
            for view in views:
                if view.event_key is not None and view.event_key in seen:
                    steps.append(Accepted(seen[view.event_key], "duplicate"))
                    continue
                event_id = str(uuid.uuid4())
                if view.event_key is not None:
                    seen[view.event_key] = event_id
                doc = None
                if view.forward:
                    key = (view.kind, view.location_id, view.document_id)
                    doc = docs.get(key) or docs.setdefault(key, _Doc(now))
                    doc.views += 1
                    doc.last, doc.request_id = now, view.request_id
                steps.append((view, event_id, doc))
            plan.append(steps)
        if docs:
            # Sorted: every writer locks rows in one order, so two never deadlock.
            params = [{"p_kind": k[0], "p_location_id": k[1], "p_document_id": k[2],
                       "p_views": doc.views, "p_first": doc.first, "p_last": doc.last,
                       "p_request_id": doc.request_id} for k, doc in sorted(docs.items())]
            for row in self._run(conn, _UPSERT, _UPSERT_KEYS, params):
                doc = docs[(row.kind, row.location_id, row.document_id)]
                doc.row_id = row.id
                doc.next_seq = row.views_seq - doc.views + 1
                doc.done_seq = max(row.sent_seq, row.failed_seq)
        # Second pass: sequence numbers in arrival order, the events rows, the answers.
        rows, results = [], []
        for (_, now), steps in zip(group, plan, strict=True):
            out = []
            for step in steps:
                if isinstance(step, Accepted):
                    out.append(step)
                    continue
                view, event_id, doc = step
                row_id = seq = None
                coalesced = False
                if doc is not None:
                    row_id, seq = doc.row_id, doc.next_seq
                    doc.next_seq += 1
                    coalesced = seq - doc.done_seq > 1
                rows.append({
                    "id": event_id, "event_key": view.event_key, "document_row": row_id,
                    "seq": seq, "kind": view.kind, "location_id": view.location_id,
                    "document_id": view.document_id, "viewed_at": view.viewed_at,
                    "received_at": now, "source": view.source, "user_agent": view.user_agent,
                    "ip": view.ip, "verdict": view.verdict,
                    "verdict_reason": view.verdict_reason, "forward": view.forward,
                    "request_id": view.request_id})
                out.append(Accepted(event_id, "queued" if view.forward else "filtered",
                                    coalesced=coalesced))
            results.append(out)
        if rows:
            self._run(conn, _INSERT_EVENTS, _EVENT_KEYS, rows)
        return results

    def _run(self, conn, sql: dict[str, str], keys: tuple[str, ...], rows: list[dict]):
        """Execute one of the statements below for ``rows``: PostgreSQL takes one array per
        column (unnest), SQLite one JSON array of rows (json_each). Naive times are
        refused on both, as ``db.UTCDateTime`` (which formats SQLite's) refuses them."""
        if self._pg:
            columns = {k: [row[k] for row in rows] for k in keys}
            for key in _TIMES.intersection(keys):
                if any(t is not None and t.tzinfo is None for t in columns[key]):
                    raise ValueError("naive datetime given to the store")
            return conn.exec_driver_sql(sql["postgresql"], columns)
        if self._time is None:
            self._time = UTCDateTime().dialect_impl(conn.dialect).bind_processor(conn.dialect)
        fmt = self._time
        data = [[fmt(row[k]) if k in _TIMES else row[k] for k in keys] for row in rows]
        return conn.exec_driver_sql(sql["sqlite"], (json.dumps(data),))


# Each statement takes all of a group's rows as ONE parameter: on PostgreSQL one array per
# column, unnested; on SQLite one JSON array of rows, read with json_each. So a group of
# any size is one statement with a fixed text (one call, one plan) instead of one per row.
_UPSERT_KEYS = ("p_kind", "p_location_id", "p_document_id", "p_views", "p_first", "p_last",
                "p_request_id")
_EVENT_KEYS = ("id", "event_key", "document_row", "seq", "kind", "location_id", "document_id",
               "viewed_at", "received_at", "source", "user_agent", "ip", "verdict",
               "verdict_reason", "forward", "request_id")
_UPSERT_COLUMNS = ("kind", "location_id", "document_id", "views", "first", "last",
                   "request_id")
_TIMES = frozenset({"p_first", "p_last", "viewed_at", "received_at"})
_REOPEN = f"d.status IN ('{IDLE}', '{DEAD}')"


def _json_columns(names: tuple[str, ...]) -> str:
    """SQLite: the columns of json_each's rows (JSON arrays), named."""
    return ", ".join(f"json_extract(j.value, '$[{i}]') AS {name}"
                     for i, name in enumerate(names))


# Count the group's views of each document in one upsert (concurrent writers never lose
# a count); an idle or dead row becomes pending, due at once or at the end of the
# coalescing window after its last send. SET expressions see the row as it was.
_UPSERT_TAIL = f"""
ON CONFLICT (kind, location_id, document_id) DO UPDATE SET
    views_seq = d.views_seq + excluded.views_seq,
    status = CASE WHEN {_REOPEN} THEN '{PENDING}' ELSE d.status END,
    due_at = CASE WHEN {_REOPEN} THEN
                 CASE WHEN d.quiet_until > excluded.due_at THEN d.quiet_until
                      ELSE excluded.due_at END
             ELSE d.due_at END,
    pending_since = CASE WHEN {_REOPEN} THEN excluded.pending_since ELSE d.pending_since END,
    attempts = CASE WHEN {_REOPEN} THEN 0 ELSE d.attempts END,
    dead_reason = CASE WHEN {_REOPEN} THEN NULL ELSE d.dead_reason END,
    last_request_id = excluded.last_request_id,
    updated_at = excluded.updated_at
RETURNING id, kind, location_id, document_id, views_seq, sent_seq, failed_seq
"""
_UPSERT_HEAD = """
INSERT INTO documents AS d (kind, location_id, document_id, status, views_seq, due_at,
                            pending_since, updated_at, last_request_id)
SELECT u.kind, u.location_id, u.document_id, '{status}', u.views, u.first, u.first, u.last,
       u.request_id
"""
_UPSERT = {
    "postgresql": _UPSERT_HEAD.format(status=PENDING) + f"""
FROM unnest(%(p_kind)s::varchar[], %(p_location_id)s::varchar[], %(p_document_id)s::varchar[],
            %(p_views)s::int[], %(p_first)s::timestamptz[], %(p_last)s::timestamptz[],
            %(p_request_id)s::varchar[])
     AS u({", ".join(_UPSERT_COLUMNS)})
""" + _UPSERT_TAIL,
    # WHERE true: SQLite's parser needs it between INSERT .. SELECT and ON CONFLICT.
    "sqlite": _UPSERT_HEAD.format(status=PENDING) + f"""
FROM (SELECT {_json_columns(_UPSERT_COLUMNS)} FROM json_each(?) AS j) AS u WHERE true
""" + _UPSERT_TAIL,
}
_EVENT_COLUMNS = ", ".join(_EVENT_KEYS)
_INSERT_EVENTS = {
    "postgresql": f"""
INSERT INTO events ({_EVENT_COLUMNS})
SELECT * FROM unnest(
    %(id)s::varchar[], %(event_key)s::varchar[], %(document_row)s::bigint[], %(seq)s::int[],
    %(kind)s::varchar[], %(location_id)s::varchar[], %(document_id)s::varchar[],
    %(viewed_at)s::timestamptz[], %(received_at)s::timestamptz[], %(source)s::varchar[],
    %(user_agent)s::varchar[], %(ip)s::varchar[], %(verdict)s::varchar[],
    %(verdict_reason)s::varchar[], %(forward)s::boolean[], %(request_id)s::varchar[])
""",
    "sqlite": f"""
INSERT INTO events ({_EVENT_COLUMNS})
SELECT {_json_columns(_EVENT_KEYS)} FROM json_each(?) AS j
""",
}
