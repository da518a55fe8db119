"""The overview's rollup: views and deliveries counted per UTC hour, off the ingest path.

Counting 30 days of events and delivery-log rows on every page view would not stay fast
at millions of rows, and counting views as they arrive would cost the pixel's hot path.
So the forwarders fold both into ``stats_hourly`` (counts) and ``stats_latency`` (the
successful sends of each hour by how long their views waited) about once a minute
(``fold``), up to a watermark (``stats_watermark``); a reader adds what came after the
watermark, counted live (``tally``). The numbers are exact, and the live part is a few
minutes of rows.

The watermark is a time. Events are taken by their ids (UUIDv7 of ``received_at``: a
range of the primary key), delivery-log rows by ``at`` (indexed). A row is folded only
once it is ``lag`` old, since three things happen after a row's time: a view's id is made
before its transaction commits; a client's repeat adds to its row for up to one coalescing
window (``clients.RecentClients``); an outcome's ``at`` is taken before its commit. The
lag (the coalescing window plus ``LAG_MARGIN``) covers them and clock skew between hosts.

Folding is idempotent across forwarders: a range's counts are added in the transaction
that moves the watermark from the range's start to its end, and only if it still is at
the start (compare and set; a forwarder that lost the race adds nothing). The counts are
read before that transaction, so SQLite's write lock is held only for a few upserts.
Retention deletes events and log rows after 30 days, long after they were folded (the
forwarder folds before it prunes), and nothing here reads below the watermark again.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .db import delivery_log, documents, events, stats_hourly, stats_latency, stats_watermark
from .documents import IDLE
from .engine import dialect_insert, read_only
from .viewrows import event_id_floor

UTC = dt.UTC
NAME = "overview"  # the watermark's row
DAYS = 30  # how far back the overview looks; older counts are not kept
LAG_MARGIN = dt.timedelta(minutes=2)  # commit delay and clock skew, beyond the window
CHUNK = dt.timedelta(hours=6)  # one fold's range at most (catching up after a pause)
MAX_CHUNKS = (DAYS + 2) * 4  # a fold catches up on 30 days in one call
COUNTS = ("received", "filtered", "delivered", "failed")
# The delivery-log outcomes whose views went dead (``Outcome("dead", ...)`` in the
# forwarder's ``classify``; ``replay`` matches the same names). Parked views (no_token,
# token_invalid, token_unreadable) are not failed: they are sent once a token is stored.
FAILED_OUTCOMES = ("permanent", "expired")


@dataclass
class Tally:
    """Counts per hour (received, filtered, delivered, failed: ``COUNTS``), and
    successful sends per (hour, ``waited_ms`` to two significant digits)."""

    hours: dict[dt.datetime, list[int]] = field(default_factory=dict)
    waits: Counter = field(default_factory=Counter)

    def add(self, hour: dt.datetime, index: int, n: int) -> None:
        self.hours.setdefault(hour, [0, 0, 0, 0])[index] += int(n or 0)


def hour_start(at: dt.datetime) -> dt.datetime:
    """The start of ``at``'s UTC hour."""
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def day_start(at: dt.datetime) -> dt.datetime:
    """The start of ``at``'s UTC day."""
    return hour_start(at).replace(hour=0)


def _bucket(column: sa.Column, *, when: str):
    """``column`` (milliseconds) rounded to two significant digits where ``when`` holds
    (else NULL): exact below 100 ms, within 5% above. Integer arithmetic both stores share
    (``/`` of integers truncates), written out as one literal so GROUP BY can repeat it."""
    c = f"{column.table.name}.{column.name}"
    whens = " ".join(f"WHEN {c} < {10 ** digits} THEN ({c} + {10 ** (digits - 2) // 2}) "
                     f"/ {10 ** (digits - 2)} * {10 ** (digits - 2)}" for digits in range(3, 16))
    return sa.literal_column(
        f"CASE WHEN NOT ({when}) THEN NULL WHEN {c} < 100 THEN {c} {whens} ELSE {c} END",
        type_=sa.BigInteger())


def truncated(column, unit: str, dialect: str):
    """The start of a time column's UTC ``unit`` (hour or day), as the dialect gives it
    (``as_time`` reads it). Literals, not bind parameters: GROUP BY repeats it exactly."""
    if dialect == "postgresql":
        return sa.func.date_trunc(sa.literal_column(f"'{unit}'"),
                                  sa.func.timezone(sa.literal_column("'UTC'"), column),
                                  type_=sa.DateTime())
    # SQLite stores UTC text, 'YYYY-MM-DD HH:MM:SS.ffffff' (``db.UTCDateTime``).
    length = {"hour": 13, "day": 10}[unit]
    return sa.func.substr(column, sa.literal_column("1"), sa.literal_column(str(length)),
                          type_=sa.String())


def as_time(value) -> dt.datetime:
    """A ``truncated`` value as an aware UTC datetime."""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)  # 'YYYY-MM-DD HH' or 'YYYY-MM-DD'
    return value.replace(tzinfo=UTC)


def tally(conn, *, since: dt.datetime, until: dt.datetime | None = None) -> Tally:
    """Count the views and the deliveries of [``since``, ``until``) per hour."""
    dialect = conn.dialect.name
    e, log = events.c, delivery_log.c
    found = Tally()
    hour = truncated(e.received_at, "hour", dialect)
    views = (sa.select(hour, sa.func.sum(e.views), sa.func.sum(sa.case((e.forward, 0),
                                                                       else_=e.views)))
             .where(e.id >= event_id_floor(since)).group_by(hour))
    if until is not None:
        views = views.where(e.id < event_id_floor(until))
    for at, received, filtered in conn.execute(views):
        found.add(as_time(at), 0, received)
        found.add(as_time(at), 1, filtered)
    # One pass over the log: per hour and outcome, and per wait for the delivered.
    hour = truncated(log.at, "hour", dialect)
    waited = _bucket(log.waited_ms, when="delivery_log.outcome = 'delivered'")
    sends = (sa.select(hour, log.outcome, waited, sa.func.sum(log.views_covered),
                       sa.func.count())
             .where(log.at >= since).group_by(hour, log.outcome, waited))
    if until is not None:
        sends = sends.where(log.at < until)
    for at, outcome, ms, views, n in conn.execute(sends):
        if outcome == "delivered":
            found.add(as_time(at), 2, views)
            if ms is not None:
                found.waits[(as_time(at), int(ms))] += n
        elif outcome in FAILED_OUTCOMES:
            found.add(as_time(at), 3, views)
    return found


def folded_to(conn) -> dt.datetime | None:
    """Where the rollup ends (exclusive): None before the first fold."""
    w = stats_watermark.c
    return conn.execute(sa.select(w.folded_to).where(w.name == NAME)).scalar()


def fold(engine: Engine, *, now: dt.datetime, lag: dt.timedelta) -> int:
    """Fold the views and deliveries older than ``lag`` into the hourly counts, a range
    holding at most ``CHUNK`` of rows per transaction; return how many ranges this call
    folded (0: nothing new, or another forwarder folded it first)."""
    cutoff = (now - lag).replace(microsecond=0)
    horizon = day_start(cutoff) - dt.timedelta(days=DAYS)  # never shown
    for done in range(MAX_CHUNKS):
        with read_only(engine) as conn:
            was = folded_to(conn)
            start = horizon if was is None else max(was, horizon)
            if was is not None and cutoff <= start:
                return done
            # Skip a stretch without rows in one go (a new store, a quiet night).
            first = _first_row_at(conn, start)
            end = cutoff if first is None else min(cutoff, first + CHUNK)
            found = tally(conn, since=start, until=end)
            idle = count_idle(conn) if end >= cutoff else None
        with engine.begin() as conn:
            if not _advance(conn, was=was, to=end, idle=idle):
                return done
            _add(conn, found)
            conn.execute(stats_hourly.delete().where(stats_hourly.c.hour < horizon))
            conn.execute(stats_latency.delete().where(stats_latency.c.hour < horizon))
        if end >= cutoff:
            return done + 1
    return MAX_CHUNKS


def _first_row_at(conn, start: dt.datetime) -> dt.datetime | None:
    """The time of the earliest event or log row at or after ``start`` (two index seeks)."""
    e, log = events.c, delivery_log.c
    found = [conn.execute(sa.select(e.received_at).where(e.id >= event_id_floor(start))
                          .order_by(e.id).limit(1)).scalar(),
             conn.execute(sa.select(sa.func.min(log.at)).where(log.at >= start)).scalar()]
    found = [at for at in found if at is not None]
    return max(min(found), start) if found else None


def count_idle(conn) -> int:
    """Count the idle documents (every document ever viewed, less the few waiting)."""
    d = documents.c
    return conn.execute(sa.select(sa.func.count()).where(d.status == IDLE)).scalar()


def idle_documents(conn) -> int | None:
    """The idle documents as the last fold counted them (None before the first fold)."""
    w = stats_watermark.c
    return conn.execute(sa.select(w.idle_documents).where(w.name == NAME)).scalar()


def _advance(conn, *, was: dt.datetime | None, to: dt.datetime, idle: int | None) -> bool:
    """Move the watermark from ``was`` to ``to`` (with the idle count, when given); False
    if it is no longer at ``was``. (PostgreSQL: a concurrent mover waits for this one's
    commit, then finds it moved.)"""
    w = stats_watermark.c
    values = {"folded_to": to} | ({} if idle is None else {"idle_documents": idle})
    if was is None:
        # RETURNING, not rowcount: psycopg reports -1 for INSERT ... ON CONFLICT DO NOTHING.
        first = (dialect_insert(stats_watermark, conn.dialect.name)
                 .values(name=NAME, **values).on_conflict_do_nothing(index_elements=["name"])
                 .returning(w.name))
        return conn.execute(first).first() is not None
    return conn.execute(stats_watermark.update().where(w.name == NAME, w.folded_to == was)
                        .values(**values)).rowcount == 1


def _add(conn, found: Tally) -> None:
    """Add ``found`` to the rollup's rows (created at zero where missing)."""
    dialect = conn.dialect.name
    if found.hours:
        insert = dialect_insert(stats_hourly, dialect)
        conn.execute(insert.on_conflict_do_update(
            index_elements=["hour"],
            set_={name: stats_hourly.c[name] + insert.excluded[name] for name in COUNTS},
        ), [{"hour": hour, **dict(zip(COUNTS, counts, strict=True))}
            for hour, counts in sorted(found.hours.items())])
    if found.waits:
        insert = dialect_insert(stats_latency, dialect)
        conn.execute(insert.on_conflict_do_update(
            index_elements=["hour", "waited_ms"],
            set_={"deliveries": stats_latency.c.deliveries + insert.excluded.deliveries},
        ), [{"hour": hour, "waited_ms": waited, "deliveries": n}
            for (hour, waited), n in sorted(found.waits.items())])
