"""The operator's overview: views per hour and per day, the queue by state, and how long
views wait before HighLevel hears of them.

Read from the hourly rollup (``rollup``) plus what came after its watermark, counted
live, in one snapshot (SQLite: one read transaction; PostgreSQL: REPEATABLE READ), so a
fold that commits meanwhile is counted once, not twice or never.

What the numbers mean:
  received   views stored (``events.views``: a client's repeats within the coalescing
             window count too), by the hour they arrived
  filtered   of them, those not forwarded (machine opens with ``MACHINE_OPENS=skip``)
  delivered  views a successful send covered (``delivery_log.views_covered``), by the
             hour of the send; a document's views that waited together are one send
  failed     views a send made dead (``rollup.FAILED_OUTCOMES``: permanent, expired); a
             replayed view that is then delivered counts in both
  latency    the successful sends of the 24 hours shown: from the document's first waiting
             view (``documents.pending_since``) to HighLevel's answer, nearest-rank
             percentiles of ``waited_ms`` rounded to two significant digits
  queue      documents by state (``documents``): pending (waiting, not leased), leased
             (pending, a forwarder holds it), blocked (parked: no usable token), dead; and
             idle (every view sent) as of the forwarders' last fold, about a minute ago
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .db import documents, stats_hourly, stats_latency
from .documents import BLOCKED, DEAD, PENDING
from .rollup import (
    COUNTS,
    DAYS,
    Tally,
    as_time,
    count_idle,
    day_start,
    folded_to,
    hour_start,
    idle_documents,
    tally,
    truncated,
)

HOURS = 24


def overview(engine: Engine, *, now: dt.datetime) -> dict:
    """Return the overview at ``now``: ``hourly`` (24 entries, oldest first, the current
    hour last), ``daily`` (30 UTC days, today last), ``queue`` and ``latency``."""
    this_hour, today = hour_start(now), day_start(now)
    hours = [this_hour - dt.timedelta(hours=n) for n in range(HOURS - 1, -1, -1)]
    days = [today - dt.timedelta(days=n) for n in range(DAYS - 1, -1, -1)]
    with _snapshot(engine) as conn:
        hourly, daily, waits = _counts(conn, hours=hours, days=days)
        queue = _queue(conn, now=now)
    return {
        "hourly": [_entry(hour, hourly.get(hour)) for hour in hours],
        "daily": [_entry(day, daily.get(day)) for day in days],
        "queue": queue,
        "latency": _latency(waits),
    }


def _snapshot(engine: Engine) -> sa.Connection:
    """A read transaction that sees one moment across statements."""
    conn = engine.connect().execution_options(read_only=True)
    if engine.dialect.name == "postgresql":
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
    return conn


def _counts(conn, *, hours: list[dt.datetime], days: list[dt.datetime]):
    """The rollup's counts per hour of ``hours`` and per day of ``days``, and its sends of
    ``hours`` per ``waited_ms``; each plus what came after the watermark, counted live."""
    h, lat = stats_hourly.c, stats_latency.c
    counts = [sa.func.sum(h[name]) for name in COUNTS]
    day = truncated(h.hour, "day", conn.dialect.name)
    daily = {as_time(at): [int(n) for n in values] for at, *values in conn.execute(
        sa.select(day, *counts).where(h.hour >= days[0]).group_by(day))}
    hourly = {row.hour: [int(row._mapping[name]) for name in COUNTS] for row in conn.execute(
        sa.select(stats_hourly).where(h.hour >= hours[0], h.hour <= hours[-1]))}
    waits: Counter = Counter()
    for waited, n in conn.execute(sa.select(lat.waited_ms, sa.func.sum(lat.deliveries))
                                  .where(lat.hour >= hours[0], lat.hour <= hours[-1])
                                  .group_by(lat.waited_ms)):
        waits[int(waited)] += int(n)
    folded = folded_to(conn)
    live: Tally = tally(conn, since=days[0] if folded is None else max(folded, days[0]))
    for hour, values in live.hours.items():  # (hours not shown are added, and not read)
        for into, key in ((hourly, hour), (daily, day_start(hour))):
            row = into.setdefault(key, [0, 0, 0, 0])
            for i, n in enumerate(values):
                row[i] += n
    for (hour, waited), n in live.waits.items():
        if hours[0] <= hour <= hours[-1]:
            waits[waited] += n
    return hourly, daily, waits


def _entry(start: dt.datetime, values: list[int] | None) -> dict:
    return {"start": start, **dict(zip(COUNTS, values or [0, 0, 0, 0], strict=True))}


def _queue(conn, *, now: dt.datetime) -> dict[str, int]:
    """Documents by state, leased ones (pending, held by a forwarder) apart. Idle is as
    the forwarders' last fold counted it (``rollup.fold``, about once a minute): it grows
    with every document ever viewed, and counting it would make every page slower."""
    d = documents.c
    by_status = dict(conn.execute(sa.select(d.status, sa.func.count())
                                  .where(d.status.in_((PENDING, BLOCKED, DEAD)))
                                  .group_by(d.status)).all())
    leased = conn.execute(sa.select(sa.func.count()).where(
        d.status == PENDING, d.locked_until > now)).scalar()
    idle = idle_documents(conn)
    if idle is None:  # never folded (no forwarder has run yet): a small store, count it
        idle = count_idle(conn)
    return {"pending": by_status.get(PENDING, 0) - leased, "leased": leased,
            "blocked": by_status.get(BLOCKED, 0), "dead": by_status.get(DEAD, 0),
            "idle": idle}


def _latency(waits: Counter) -> dict:
    """p50 and p99 (nearest rank) of sends counted per ``waited_ms``."""
    samples = sum(waits.values())
    return {"p50Ms": percentile(waits, 50), "p99Ms": percentile(waits, 99),
            "samples": samples}


def percentile(counts: Counter, pct: float) -> int | None:
    """The nearest-rank ``pct`` percentile of values counted in ``counts`` (value -> how
    many); None when there are none."""
    total = sum(counts.values())
    if not total:
        return None
    rank, seen = max(math.ceil(pct / 100 * total), 1), 0
    for value in sorted(counts):
        seen += counts[value]
        if seen >= rank:
            return value
    raise AssertionError("unreachable")
