"""The statements ``recording.ViewWriter`` records a group of views with, per dialect.

SQLite: a statement per step, each with a row of VALUES per document or view (cached
by the number of rows; the sqlite3 module caches prepared statements by their text).
PostgreSQL: ONE statement for the whole group, the rows as JSON parameters.
"""

from __future__ import annotations

import functools

from .documents import PENDING
from .documents import REOPENED as _REOPENED
from .viewrows import STORED

_UPSERT_HEAD = """
INSERT INTO documents AS d (kind, location_id, document_id, status, views_seq, due_at,
                            pending_since, updated_at, last_request_id)
"""
# Count a document's views in the group (concurrent writers never lose a count).
# Parameters, per document: kind, location, document, views, first and last arrival, the
# last view's request id. On SQLite the SET leaves status and due_at alone: SQLite
# rewrites the entries of every index on a column the SET names, even to the same value,
# which cost ~30 us per view; the few documents that were idle or dead (the counts read
# back say) are reopened by ``REOPEN`` after it.
_UPSERT_SET = """
ON CONFLICT (kind, location_id, document_id) DO UPDATE SET
    views_seq = d.views_seq + excluded.views_seq,
    last_request_id = excluded.last_request_id,
    updated_at = excluded.updated_at"""
COUNTS = "id, kind, location_id, document_id, views_seq, sent_seq, failed_seq, status"
UPSERT_KEYS = ("kind", "location_id", "document_id", "views", "first", "last", "request_id")
# SQLite's insert: a view's stored values (``viewrows.Row``), then its document's row,
# its sequence number and the views it stands for.
EVENT_KEYS = (*STORED, "document_row", "seq", "views")
_EVENT_COLUMNS = ", ".join(EVENT_KEYS)

# PostgreSQL, one round trip: upsert the documents (reopening idle or dead ones in the same
# SET: PostgreSQL has no index cost for a column set to its own value), insert the events
# numbered from the counts the upsert returns, and return those counts. A view's number is
# its document's new count, less the group's views of it, plus its place among them.
# Parameters: ``docs`` (UPSERT_KEYS) and ``events`` (PG_EVENT_KEYS), JSON arrays.
PG_EVENT_KEYS = (*STORED, "views", "n", "place")
_PG_EVENT_VALUES = ", ".join(f"r.{column}" for column in STORED)
WRITE_PG = f"""
WITH up AS ({_UPSERT_HEAD}
    SELECT u.kind, u.location_id, u.document_id, '{PENDING}', u.views, u.first, u.first,
           u.last, u.request_id
    FROM json_to_recordset(%(docs)s::json) AS u(
        kind varchar, location_id varchar, document_id varchar, views int,
        first timestamptz, last timestamptz, request_id varchar)
    WHERE true{_UPSERT_SET},
    status = CASE WHEN {_REOPENED} THEN '{PENDING}' ELSE d.status END,
    due_at = CASE WHEN {_REOPENED} THEN GREATEST(d.quiet_until, excluded.due_at)
                  ELSE d.due_at END,
    pending_since = CASE WHEN {_REOPENED} THEN excluded.pending_since
                         ELSE d.pending_since END,
    attempts = CASE WHEN {_REOPENED} THEN 0 ELSE d.attempts END,
    dead_reason = CASE WHEN {_REOPENED} THEN NULL ELSE d.dead_reason END
    RETURNING {COUNTS}
), inserted AS (
    INSERT INTO events ({_EVENT_COLUMNS})
    SELECT {_PG_EVENT_VALUES}, up.id, up.views_seq - r.n + r.place, r.views
    FROM json_to_recordset(%(events)s::json) AS r(
        id varchar, event_key varchar, kind varchar, location_id varchar,
        document_id varchar, viewed_at timestamptz, received_at timestamptz,
        source varchar, user_agent varchar, ip varchar, verdict varchar,
        verdict_reason varchar, forward boolean, request_id varchar, views int, n int,
        place int)
    LEFT JOIN up ON r.forward AND up.kind = r.kind AND up.location_id = r.location_id
                    AND up.document_id = r.document_id
)
SELECT {COUNTS} FROM up
"""

# Look-ups by (location, key) pairs, through the per-location unique indexes. PostgreSQL
# takes the pairs as two arrays, SQLite as one JSON array of pairs.
_PAIRS = {
    "postgresql": "unnest(%s::varchar[], %s::varchar[]) AS k(l, c)",
    "sqlite": "(SELECT json_extract(value, '$[0]') AS l, json_extract(value, '$[1]') AS c "
              "FROM json_each(?)) AS k",
}
# The events already stored under these eventIds, with what they were about.
SEEN = {name: "SELECT e.location_id, e.event_key, e.id, e.kind, e.document_id "
              f"FROM {pairs} JOIN events e ON e.location_id = k.l AND e.event_key = k.c"
        for name, pairs in _PAIRS.items()}



@functools.lru_cache(maxsize=64)
def sqlite_upsert(n: int) -> str:
    return (_UPSERT_HEAD + "VALUES " + ", ".join([f"(?, ?, ?, '{PENDING}', ?, ?, ?, ?, ?)"] * n)
            + _UPSERT_SET)


@functools.lru_cache(maxsize=64)
def sqlite_counts(n: int) -> str:
    """The counts of n documents, as one row of JSON (one row to step through)."""
    return ("WITH k(kind, location_id, document_id) AS (VALUES "
            + ", ".join(["(?, ?, ?)"] * n) + ") "
            f"SELECT json_group_array(json_array({COUNTS})) "
            "FROM k JOIN documents USING (kind, location_id, document_id)")


@functools.lru_cache(maxsize=64)
def sqlite_insert(n: int) -> str:
    return (f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES "
            + ", ".join([f"({', '.join('?' * len(EVENT_KEYS))})"] * n))
