"""What the forwarder has seen of each location, kept off the ingest path: which locations
have views (``known_locations``), and their views by verdict (``view_counts``).

Events have no index by location: each index costs every pixel view a B-tree page in its
commit (migration 0006). So the locations directory and a location's page never read
every event or every document; the forwarder keeps these two tables instead:

- ``remember``: each outcome batch adds the locations of the documents it attempted (an
  insert that does nothing for the known ones), so a location whose views wait without
  a token is listed seconds after its first view, once the forwarder has tried it.
- ``count_new``: every minute, the events received more than a lag ago and not counted
  yet are added to ``view_counts`` (and their locations to ``known_locations``: views
  that are all filtered machine opens have no document), walking the time-ordered
  primary key from where it stopped (``rollups``), a batch per transaction.
  ``views_by_verdict`` reads those counts plus the location's newer events (a range of the
  primary key: the last few minutes), so its answer is exact whatever the lag, and reads
  every event only when no forwarder has ever counted.

Why a lag: an event row still changes for a while after it is written (a client's repeats
within the coalescing window add to its ``views``), and a group commit can land a moment
after its ids were made; counting only rows older than both counts each once, whole.
Counts are of views recorded: pruning old events (``EVENT_RETENTION_DAYS``) leaves them;
purging a location (``retention.purge_location``) deletes them and its known row.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .db import events, known_locations, rollups, view_counts
from .engine import dialect_insert
from .viewrows import event_id_floor

NAME = "view_counts"  # this roll-up's row in ``rollups``
MIN_LAG = dt.timedelta(minutes=5)
BATCH = 20_000
BATCHES = 5  # per pass: 100,000 events a minute at most (a second or two of a forwarder)

e, k, v = events.c, known_locations.c, view_counts.c


def remember(conn, location_ids: Iterable[str], *, now: dt.datetime) -> None:
    """Add ``location_ids`` to the known locations (the known ones are left alone)."""
    rows = [{"location_id": i, "first_seen_at": now} for i in sorted(set(location_ids))]
    if rows:
        conn.execute(_remember_statement(conn.dialect.name), rows)


@functools.lru_cache(maxsize=2)
def _remember_statement(dialect: str):
    """``remember``'s insert, built once per dialect (it runs for every outcome batch)."""
    return dialect_insert(known_locations, dialect).on_conflict_do_nothing(
        index_elements=["location_id"])


def lag_for(coalesce_window: int) -> dt.timedelta:
    """How old an event must be to be counted: past two coalescing windows, and at
    least ``MIN_LAG``."""
    return max(MIN_LAG, dt.timedelta(seconds=2 * coalesce_window + 60))


def count_new(engine: Engine, *, now: dt.datetime, lag: dt.timedelta,
              batch: int = BATCH, batches: int = BATCHES) -> int:
    """Add the events received before ``now - lag`` and not counted yet to
    ``view_counts``, at most ``batches`` batches of ``batch``; return how many events
    were counted.

    Each batch reads and moves the roll-up's mark in the transaction that adds its
    counts, with the mark's row locked (PostgreSQL ``FOR UPDATE``; SQLite's write lock),
    so forwarders running it at once never count an event twice. The cap keeps a
    forwarder's pass short when there is a backlog (the first pass after migration 0008
    on a large store): the rest is counted on the next passes, and reads stay exact.
    """
    below = event_id_floor(now - lag)
    total = 0
    for _ in range(batches):
        with engine.begin() as conn:
            through = _mark(conn, now)
            page = (sa.select(e.id).where(e.id > through, e.id < below)
                    .order_by(e.id).limit(batch).subquery())
            last = conn.execute(sa.select(sa.func.max(page.c.id))).scalar()
            if last is None:
                return total
            counted = conn.execute(
                sa.select(e.location_id, e.verdict, sa.func.sum(e.views).label("views"),
                          sa.func.count().label("rows"))
                .where(e.id > through, e.id <= last).group_by(e.location_id, e.verdict)).all()
            insert = dialect_insert(view_counts, conn.dialect.name)
            conn.execute(insert.on_conflict_do_update(
                index_elements=[v.location_id, v.verdict],
                set_={"views": v.views + insert.excluded.views}),
                [{"location_id": r.location_id, "verdict": r.verdict, "views": int(r.views)}
                 for r in counted])
            remember(conn, (r.location_id for r in counted), now=now)
            conn.execute(rollups.update().where(rollups.c.name == NAME)
                         .values(through_id=last, updated_at=now))
        rows = sum(r.rows for r in counted)
        total += rows
        if rows < batch:
            break
    return total


def _mark(conn, now: dt.datetime) -> str:
    """The last event id counted ('' before the first), its row locked."""
    conn.execute(dialect_insert(rollups, conn.dialect.name)
                 .values(name=NAME, through_id="", updated_at=now)
                 .on_conflict_do_nothing(index_elements=["name"]))
    query = sa.select(rollups.c.through_id).where(rollups.c.name == NAME)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return conn.execute(query).scalar_one()


def views_by_verdict(conn, location_id: str) -> dict[str, int]:
    """A location's views by verdict: the counted ones plus its events newer than the
    roll-up's mark.

    The mark is read first and given as a value, so that PostgreSQL plans the newer
    events as the short range of the primary key they are (a mark read inside the
    statement is planned as a third of the table: a parallel scan's start-up, 20+ ms);
    read again after, it tells whether a count landed in between (then the sum may hold
    some events twice: read again).
    """
    mark = _current_mark(conn)
    for _ in range(3):
        both = sa.union_all(
            sa.select(v.verdict, v.views).where(v.location_id == location_id),
            sa.select(e.verdict, e.views).where(e.id > mark, e.location_id == location_id),
        ).subquery()
        rows = conn.execute(sa.select(both.c.verdict, sa.func.sum(both.c.views))
                            .group_by(both.c.verdict)).all()
        now_mark = _current_mark(conn)
        if now_mark == mark:
            break
        mark = now_mark
    return {verdict: int(n) for verdict, n in rows if n}


def _current_mark(conn) -> str:
    return conn.execute(sa.select(rollups.c.through_id)
                        .where(rollups.c.name == NAME)).scalar() or ""


def purge(conn, location_id: str) -> dict[str, int]:
    """Forget a location: delete its counts and its known row; return rows per table."""
    return {
        "viewCounts": conn.execute(
            view_counts.delete().where(v.location_id == location_id)).rowcount,
        "knownLocations": conn.execute(
            known_locations.delete().where(k.location_id == location_id)).rowcount,
    }
