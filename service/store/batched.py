"""Inserts of a batch of rows as one statement on PostgreSQL.

psycopg runs an executemany as a pipeline of one statement per row, each with its own
parameter dumping, prepare bookkeeping and result handling in Python: for the rows the
forwarder writes with every batch that per-row CPU was a good part of the store's share
of a send (bench/forward_profile.py). On PostgreSQL ``insert_many`` sends one
``INSERT ... SELECT ... FROM unnest(<one array per column>) WITH ORDINALITY``, rows in
the order given (so ids follow it, as an executemany's do); SQLite keeps executemany
(sqlite3 loops over the rows in C).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


def insert_many(conn: sa.Connection, table: sa.Table, rows: Sequence[dict]) -> None:
    """Insert ``rows`` (dicts with the same keys) into ``table`` in the caller's
    transaction."""
    if not rows:
        return
    names = tuple(rows[0])
    if conn.dialect.name != "postgresql":
        conn.execute(_plain_insert(table), rows)
        return
    conn.execute(_unnest_insert(table, names), {
        f"col_{name}": [row[name] for row in rows] for name in names})


@functools.lru_cache(maxsize=8)
def _plain_insert(table: sa.Table):
    return table.insert()


@functools.lru_cache(maxsize=8)
def _unnest_insert(table: sa.Table, names: tuple[str, ...]):
    arrays = [sa.bindparam(f"col_{name}", type_=postgresql.ARRAY(table.c[name].type))
              for name in names]
    batch = sa.func.unnest(*arrays).table_valued(
        *names, with_ordinality="position").render_derived(name="batch")
    return table.insert().from_select(
        list(names), sa.select(*[batch.c[name] for name in names]).order_by(batch.c.position))
