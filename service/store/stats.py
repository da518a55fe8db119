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
             (pending, a forwarder holds it), blocked (parked: no usable token), dead, idle
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .db import documents, stats_hourly, stats_latency
from .documents import BLOCKED, DEAD, IDLE, PENDING
from .rollup import COUNTS, DAYS, Tally, day_start, folded_to, hour_start, tally

HOURS = 24


def overview(engine: Engine, *, now: dt.datetime) -> dict:
    """Return the overview at ``now``: ``hourly`` (24 entries, oldest first, the current
    hour last), ``daily`` (30 UTC days, today last), ``queue`` and ``latency``."""
    this_hour, today = hour_start(now), day_start(now)
    hours = [this_hour - dt.timedelta(hours=n) for n in range(HOURS - 1, -1, -1)]
    days = [today - dt.timedelta(days=n) for n in range(DAYS - 1, -1, -1)]
    with _snapshot(engine) as conn:
        counts, waits = _counts(conn, since=days[0], latency_since=hours[0])
        queue = _queue(conn, now=now)
    daily: dict[dt.datetime, list[int]] = {}
    for hour, values in counts.items():
        day = daily.setdefault(day_start(hour), [0, 0, 0, 0])
        for i, n in enumerate(values):
            day[i] += n
    return {
        "hourly": [_entry(hour, counts.get(hour)) for hour in hours],
        "daily": [_entry(day, daily.get(day)) for day in days],
        "queue": queue,
        "latency": _latency(Counter({w: n for (hour, w), n in waits.items()
                                     if hours[0] <= hour <= this_hour})),
    }


def _snapshot(engine: Engine) -> sa.Connection:
    """A read transaction that sees one moment across statements."""
    conn = engine.connect().execution_options(read_only=True)
    if engine.dialect.name == "postgresql":
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
    return conn


def _counts(conn, *, since: dt.datetime, latency_since: dt.datetime):
    """The rollup's rows from ``since``, plus what came after its watermark (live)."""
    h, lat = stats_hourly.c, stats_latency.c
    counts: dict[dt.datetime, list[int]] = {}
    for row in conn.execute(sa.select(stats_hourly).where(h.hour >= since)):
        counts[row.hour] = [int(row._mapping[name]) for name in COUNTS]
    waits: Counter = Counter()
    for hour, waited, n in conn.execute(
            sa.select(lat.hour, lat.waited_ms, lat.deliveries)
            .where(lat.hour >= latency_since)):
        waits[(hour, int(waited))] += int(n)
    folded = folded_to(conn)
    live: Tally = tally(conn, since=since if folded is None else max(folded, since))
    for hour, values in live.hours.items():
        row = counts.setdefault(hour, [0, 0, 0, 0])
        for i, n in enumerate(values):
            row[i] += n
    waits.update(live.waits)
    return counts, waits


def _entry(start: dt.datetime, values: list[int] | None) -> dict:
    return {"start": start, **dict(zip(COUNTS, values or [0, 0, 0, 0], strict=True))}


def _queue(conn, *, now: dt.datetime) -> dict[str, int]:
    """Documents by state; leased ones (pending, held by a forwarder) apart."""
    d = documents.c
    by_status = dict(conn.execute(sa.select(d.status, sa.func.count()).group_by(d.status)).all())
    leased = conn.execute(sa.select(sa.func.count()).where(
        d.status == PENDING, d.locked_until > now)).scalar()
    return {"pending": by_status.get(PENDING, 0) - leased, "leased": leased,
            "blocked": by_status.get(BLOCKED, 0), "dead": by_status.get(DEAD, 0),
            "idle": by_status.get(IDLE, 0)}


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
