"""Writing views: two statements record a group of requests' views in one transaction.

A group is the views of one request, or of several concurrent requests that share a
commit (``groupcommit.GroupCommitter``). The work is split so that as little as possible
happens while the transaction (on SQLite: the database's one write lock) is open:

- ``prepare`` runs in the request's own thread, before it joins a group: it gives each
  view its id and turns it into the row the statements read (on SQLite a JSON array with
  the times already formatted; on PostgreSQL a tuple).
- ``write`` runs inside the transaction, on a DB-API cursor. It looks up the eventIds the
  group carries (idempotency) only when it carries some, then runs two statements of
  fixed text that take the whole group as ONE parameter (SQLite: a JSON array read with
  json_each; PostgreSQL: one array per column, unnested): ONE upsert of the ``documents``
  rows the group touches, each counting all of its views (``views_seq + k``, RETURNING
  the new count), and ONE insert into ``events`` that reads each view's document row and
  sequence number back from ``documents`` (the view's rank among the group's later views
  of the same document, by a window function). So no Python runs between the statements,
  and building SQLAlchemy constructs or binding row by row, which cost more than the
  database's own work, is not done at all.
- The answers (ids, ``queued``/``duplicate``/``filtered``, ``coalesced``) come from the
  upsert's RETURNING rows.

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

from .outcomes import DEAD, IDLE, PENDING

UTC = dt.UTC


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


@dataclass(frozen=True)
class Prepared:
    """One request's views, ready for ``ViewWriter.write``: (view, new id, row) each."""

    views: tuple[tuple[View, str, object], ...]


class ViewWriter:
    """Record groups of views with two statements of fixed text (see the module doc)."""

    def __init__(self, dialect: sa.Dialect):
        self._pg = dialect.name == "postgresql"
        self._sql = _SQL["postgresql" if self._pg else "sqlite"]
        self._dbapi_error = dialect.loaded_dbapi.Error

    # -- in the request's thread -------------------------------------------------------

    def prepare(self, views: Sequence[View], now: dt.datetime) -> Prepared:
        """Give each view its id and its row (no database work)."""
        received = self._time(now)
        out = []
        for view in views:
            event_id = str(uuid.uuid4())
            viewed = received if view.viewed_at is now else self._time(view.viewed_at)
            row = (event_id, view.event_key, view.kind, view.location_id, view.document_id,
                   viewed, received, view.source, view.user_agent, view.ip, view.verdict,
                   view.verdict_reason, view.forward, view.request_id)
            out.append((view, event_id, row if self._pg else json.dumps(row)))
        return Prepared(tuple(out))

    def _time(self, value: dt.datetime | None):
        """PostgreSQL takes aware datetimes; SQLite the text ``db.UTCDateTime`` stores."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        if self._pg:
            return value
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")

    # -- inside the transaction ----------------------------------------------------------

    def write(self, cur, group: Sequence[Prepared]) -> list[list[Accepted]]:
        """Record every request of ``group`` with the DB-API cursor ``cur``, inside its
        transaction; an answer list per request.

        A view whose ``event_key`` was seen before (earlier, or earlier in the group) is
        answered ``duplicate`` with the first event's id and changes nothing.
        """
        keys = [v.event_key for prep in group for v, _, _ in prep.views
                if v.event_key is not None]
        seen = self._seen(cur, keys) if keys else {}
        rows: list[tuple[View, str, object]] = []
        answers: list[list] = []  # per request: an Accepted, or the index of its row
        for prep in group:
            out: list = []
            for item in prep.views:
                key = item[0].event_key
                if key is not None:
                    if key in seen:
                        out.append(Accepted(seen[key], "duplicate"))
                        continue
                    seen[key] = item[1]
                out.append(len(rows))
                rows.append(item)
            answers.append(out)
        if not rows:
            return answers
        payload = self._payload([row for _, _, row in rows])
        docs = {}
        if any(view.forward for view, _, _ in rows):
            for row in self._execute(cur, self._sql["upsert"], payload, fetch=True):
                docs[tuple(row[1:4])] = (row[4], max(row[5], row[6]))  # views_seq, done
        self._execute(cur, self._sql["insert"], payload)
        return self._answers(rows, answers, docs)

    def _seen(self, cur, keys: list[str]) -> dict[str, str]:
        """eventId -> id of the events already stored with these eventIds."""
        seen: dict[str, str] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            param = chunk if self._pg else json.dumps(chunk)
            seen.update(self._execute(cur, self._sql["seen"], (param,), fetch=True))
        return seen

    def _payload(self, rows: list) -> tuple:
        if self._pg:
            return tuple(list(column) for column in zip(*rows, strict=True))
        return ("[" + ",".join(rows) + "]",)

    def _execute(self, cur, sql: str, params: tuple, *, fetch: bool = False):
        """Run one statement; a driver error becomes SQLAlchemy's (IntegrityError,
        OperationalError, ...), as on the rest of the store's paths."""
        try:
            cur.execute(sql, params)
            return cur.fetchall() if fetch else None
        except self._dbapi_error as exc:
            raise sa.exc.DBAPIError.instance(sql, None, exc, self._dbapi_error,
                                             hide_parameters=True) from exc

    @staticmethod
    def _answers(rows, answers, docs) -> list[list[Accepted]]:
        """Each view's sequence number counts back from its document's new ``views_seq``
        (the upsert's), as the insert did: a view is coalesced when views sent or failed
        before it leave another one waiting ahead of it."""
        later: dict[tuple, int] = {}
        coalesced = [False] * len(rows)
        for i in range(len(rows) - 1, -1, -1):
            view = rows[i][0]
            if view.forward:
                key = (view.kind, view.location_id, view.document_id)
                behind = later.get(key, 0)
                later[key] = behind + 1
                views_seq, done = docs[key]
                coalesced[i] = views_seq - behind - done > 1
        return [[a if isinstance(a, Accepted) else
                 Accepted(rows[a][1], "queued" if rows[a][0].forward else "filtered",
                          coalesced=coalesced[a]) for a in out] for out in answers]


# The statements. Both read the group's rows (``_COLUMNS``, in arrival order ``pos``) from
# ONE parameter: on SQLite a JSON array of rows read with json_each, on PostgreSQL one
# array per column, unnested. ``later`` is how many forwarded views of the same document
# come after the row in the group: its sequence number is the document's new views_seq
# minus that.
_COLUMNS = ("id", "event_key", "kind", "location_id", "document_id", "viewed_at",
            "received_at", "source", "user_agent", "ip", "verdict", "verdict_reason",
            "forward", "request_id")
_PG_TYPES = ("varchar", "varchar", "varchar", "varchar", "varchar", "timestamptz",
             "timestamptz", "varchar", "varchar", "varchar", "varchar", "varchar", "boolean",
             "varchar")
_SOURCE = {
    "sqlite": "SELECT j.key AS pos, " + ", ".join(
        f"json_extract(j.value, '$[{i}]') AS {name}" for i, name in enumerate(_COLUMNS))
    + " FROM json_each(?) AS j",
    "postgresql": "SELECT * FROM unnest(" + ", ".join(
        f"%s::{t}[]" for t in _PG_TYPES) + ") WITH ORDINALITY AS j(" + ", ".join(_COLUMNS)
    + ", pos)",
}
_ROWS = """
WITH v AS (
    SELECT r.*, CASE WHEN r.forward THEN row_number() OVER (
        PARTITION BY r.forward, r.kind, r.location_id, r.document_id ORDER BY r.pos DESC
    ) - 1 END AS later
    FROM ({source}) AS r
)
"""
_REOPEN = f"d.status IN ('{IDLE}', '{DEAD}')"
# Count the group's views of each document in one upsert (concurrent writers never lose
# a count); an idle or dead row becomes pending, due at once or at the end of the
# coalescing window after its last send. SET expressions see the row as it was. Sorted:
# every writer locks rows in one order, so two never deadlock.
_UPSERT = f"""
INSERT INTO documents AS d (kind, location_id, document_id, status, views_seq, due_at,
                            pending_since, updated_at, last_request_id)
SELECT v.kind, v.location_id, v.document_id, '{PENDING}', count(*), min(v.received_at),
       min(v.received_at), max(v.received_at), max(CASE WHEN v.later = 0 THEN v.request_id END)
FROM v WHERE v.forward
GROUP BY v.kind, v.location_id, v.document_id ORDER BY v.kind, v.location_id, v.document_id
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
_INSERT = """
INSERT INTO events (id, event_key, document_row, seq, kind, location_id, document_id,
                    viewed_at, received_at, source, user_agent, ip, verdict, verdict_reason,
                    forward, request_id)
SELECT v.id, v.event_key, d.id, d.views_seq - v.later, v.kind, v.location_id,
       v.document_id, v.viewed_at, v.received_at, v.source, v.user_agent, v.ip, v.verdict,
       v.verdict_reason, v.forward, v.request_id
FROM v LEFT JOIN documents AS d
    ON v.forward AND d.kind = v.kind AND d.location_id = v.location_id
       AND d.document_id = v.document_id
ORDER BY v.pos
"""
_SQL = {
    dialect: {
        "upsert": _ROWS.format(source=source) + _UPSERT,
        "insert": _ROWS.format(source=source) + _INSERT,
        "seen": ("SELECT event_key, id FROM events WHERE event_key = ANY(%s)"
                 if dialect == "postgresql" else
                 "SELECT event_key, id FROM events WHERE event_key IN "
                 "(SELECT value FROM json_each(?))"),
    }
    for dialect, source in _SOURCE.items()
}
