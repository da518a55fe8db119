"""One view writer per dialect: what SQLite and PostgreSQL do their own way when a group
of views is recorded (``recording.ViewWriter`` does the rest, the same for both).

PostgreSQL counts, reopens and inserts in ONE statement (one round trip), the documents
and the events each as one JSON parameter. SQLite runs a statement per step, each with a
row of VALUES per document or view, and reads the counts back as one JSON row (each row
a cursor returns costs a GIL hand-off, taken while the write lock is held). The
statements are in ``view_sql``.
"""

from __future__ import annotations

import datetime as dt
import json

import sqlalchemy as sa

from . import view_sql
from .documents import REOPEN
from .recording import ViewWriter
from .viewrows import chunks


class SqliteViewWriter(ViewWriter):
    """SQLite: a statement per step; times as the UTC text ``db.UTCDateTime`` stores."""

    seen_sql = view_sql.SEEN["sqlite"]
    add_views_sql = "UPDATE events SET views = views + ? WHERE id = ?"

    def _format_time(self, value: dt.datetime):
        return value.astimezone(dt.UTC).replace(tzinfo=None).isoformat(" ", "microseconds")

    def _pair_params(self, pairs: list[tuple[str, str]]) -> tuple:
        return (json.dumps(pairs),)

    def _count(self, cur, params: list[tuple], rows: list, docs: dict,
               repeats: list[int]) -> list:
        """Count the group's views of each document in one statement of many rows of
        VALUES, then read the counts back as one row of JSON."""
        if not params:
            return []
        found = []
        for chunk in chunks(params, 1000):
            flat = [v for kind, loc, doc, n, first, last, rid in chunk
                    for v in (kind, loc, doc, n, first, first, last, rid)]
            self._execute(cur, view_sql.sqlite_upsert(len(chunk)), flat)
            keys = [v for key in chunk for v in key[:3]]
            [(counts,)] = self._execute(cur, view_sql.sqlite_counts(len(chunk)), keys,
                                        fetch=True)
            found.extend(json.loads(counts))
        return found

    def _reopen(self, cur, row_id: int, first) -> None:
        self._execute(cur, REOPEN, (first, row_id))

    def _insert(self, cur, rows: list, numbered: list[tuple], repeats: list[int]) -> None:
        records = [(*row.stored(), document_row, seq, views)  # view_sql.EVENT_KEYS
                   for (_, row), (document_row, seq), views
                   in zip(rows, numbered, repeats, strict=True)]
        for chunk in chunks(records, 1000):  # SQLite takes up to 32,766 parameters
            self._execute(cur, view_sql.sqlite_insert(len(chunk)),
                          [v for r in chunk for v in r])


class PostgresViewWriter(ViewWriter):
    """PostgreSQL: the group in one statement; times as ISO text with their offset (read
    from JSON by the statement)."""

    seen_sql = view_sql.SEEN["postgresql"]
    add_views_sql = "UPDATE events SET views = views + %s WHERE id = %s"

    def _format_time(self, value: dt.datetime):
        return value.isoformat()

    def _pair_params(self, pairs: list[tuple[str, str]]) -> tuple:
        return ([p[0] for p in pairs], [p[1] for p in pairs])

    def _count(self, cur, params: list[tuple], rows: list, docs: dict,
               repeats: list[int]) -> list:
        """Count, reopen and insert in ONE statement; the documents' counts come back.
        (Autocommit would save the BEGIN and COMMIT round trips too, but gained nothing
        measurable, and a failure after the statement would then leave the group
        committed and written again one by one.) Each event row carries its document's
        view count in the group and its place among them, from which the statement
        numbers it as ``ViewWriter.write`` does on SQLite."""
        places: dict[tuple, int] = {}
        events = []
        for (_, row), views in zip(rows, repeats, strict=True):
            place = n = None
            if row.forward:
                place = places[row.doc] = places.get(row.doc, 0) + 1
                n = docs[row.doc][0]
            events.append((*row.stored(), views, n, place))  # view_sql.PG_EVENT_KEYS
        return self._execute(cur, view_sql.WRITE_PG, {
            "docs": _json(view_sql.UPSERT_KEYS, params),
            "events": _json(view_sql.PG_EVENT_KEYS, events),
        }, fetch=True)

    def _reopen(self, cur, row_id: int, first) -> None:
        """(Its one statement reopened them.)"""

    def _insert(self, cur, rows: list, numbered: list[tuple], repeats: list[int]) -> None:
        """(Its one statement inserted them.)"""


def view_writer(dialect: sa.Dialect, **options) -> ViewWriter:
    """The view writer for ``dialect``."""
    cls = PostgresViewWriter if dialect.name == "postgresql" else SqliteViewWriter
    return cls(dialect, **options)


def _json(keys: tuple[str, ...], rows: list[tuple]) -> str:
    """PostgreSQL: rows as one JSON parameter, read by json_to_recordset. (Lists as arrays,
    one per column, cost several times more: psycopg dumps them element by element.)"""
    return json.dumps([dict(zip(keys, row, strict=True)) for row in rows])
