"""Overview benchmark: how long ``Store.overview`` takes on a big store (the console's
overview page is this call plus the rendering).

For each store (a fresh SQLite file, a fresh PostgreSQL database) it migrates with the
service's migrations, then fills the tables directly in bulk (``executemany`` on SQLite,
``COPY`` on PostgreSQL), as 30 days of a busy service would leave them:

- ``--locations`` (10,000) x ``--documents-per-location`` (25) documents: mostly idle,
  1% pending (a fifth of them leased), 0.5% blocked, 1% dead;
- ``--events`` (1,000,000) events spread evenly over the 30 days before NOW, one view
  each (one in ten counting 2-3 repeats), 10% machine opens not forwarded;
- ``--log-rows`` (1,000,000) delivery-log rows over the same 30 days (93% delivered, the
  rest retries, 429s, parked and dead), each with a ``waited_ms``.

Then it runs the first fold (what the first forwarder does after the upgrade: 30 days
folded into the hourly rollup), as of a minute before NOW, and times
``Store.overview(now=NOW)`` ``--requests`` (200) times after ``--warmup`` (5) calls, in
two cases:

- ``quiet``: the data above; the live tail (past the watermark) is its last 4 minutes;
- ``busy``: ``--tail-rate`` (100) views/s, and as many log rows, added for those 4
  minutes: the most a reader counts live in steady state at that rate (the fold's lag of
  3 minutes plus a minute between folds).

It also times one steady fold (the first minute of the busy tail). Results: stdout and
``bench/results-overview.md``.

    .venv/bin/python bench/overview.py                         # both stores, ~10-15 min
    .venv/bin/python bench/overview.py --log-rows 5000000      # the committed run, ~25 min
    .venv/bin/python bench/overview.py --backends sqlite --events 100000 --log-rows 100000
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402 - after the path set-up, so `python bench/overview.py` works
    check_names,
    fresh_store,
    machine_section,
    markdown_table,
    percentile,
    report_head,
    store_options,
    usable_backends,
    write_report,
)

from service.config import normalize_database_url  # noqa: E402
from service.store.engine import create_engine, upgrade  # noqa: E402
from service.store.queue import Store  # noqa: E402
from service.store.viewrows import event_id_at  # noqa: E402

UTC = dt.UTC
NOW = dt.datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
SPAN = dt.timedelta(days=30)
TAIL = dt.timedelta(minutes=4)
CHUNK = 50_000
MARKER = "## What the numbers say"  # the hand-written reading, kept across runs
OUTCOMES = [("delivered", 200, 930), ("retry", 503, 20), ("rate_limited", 429, 10),
            ("network_error", None, 5), ("permanent", 404, 15), ("expired", 503, 5),
            ("token_invalid", 401, 10), ("no_token", None, 5)]
EVENT_COLUMNS = ("id", "document_row", "seq", "kind", "location_id", "document_id",
                 "viewed_at", "received_at", "verdict", "forward", "views")
DOC_COLUMNS = ("id", "kind", "location_id", "document_id", "status", "views_seq",
               "claimed_seq", "sent_seq", "failed_seq", "due_at", "locked_until",
               "attempts", "pending_since", "updated_at")
LOG_COLUMNS = ("at", "document_row", "kind", "location_id", "document_id", "attempt",
               "outcome", "http_status", "latency_ms", "views_covered", "seq_to",
               "waited_ms")


def location(i: int) -> str:
    return f"loc{i:05d}"


def documents(args, rng: random.Random):
    """Document rows: (row id, location index, document index) in order."""
    n = 0
    for loc in range(args.locations):
        for j in range(args.documents_per_location):
            n += 1
            roll = rng.random()
            status = ("pending" if roll < 0.01 else "blocked" if roll < 0.015
                      else "dead" if roll < 0.025 else "idle")
            leased = status == "pending" and rng.random() < 0.2
            at = NOW - rng.random() * SPAN
            yield (n, "invoice", location(loc), f"inv-{loc}-{j}", status, 3, 3,
                   2 if status == "pending" else 3, 0, at,
                   NOW + dt.timedelta(minutes=1) if leased else None, 0,
                   at if status in ("pending", "blocked") else None, at)


def events(count: int, start: dt.datetime, span: dt.timedelta, args, rng: random.Random):
    """``count`` event rows evenly over [start, start + span), in time order."""
    docs = args.documents_per_location
    for i in range(count):
        at = start + span * ((i + rng.random()) / count)
        loc = rng.randrange(args.locations)
        j = rng.randrange(docs)
        forward = rng.random() >= 0.1
        views = 1 if rng.random() < 0.9 else rng.choice((2, 3))
        yield (event_id_at(at), loc * docs + j + 1 if forward else None,
               rng.randrange(1, 4) if forward else None, "invoice", location(loc),
               f"inv-{loc}-{j}", at, at, "human" if forward else "scanner", forward, views)


def log_rows(count: int, start: dt.datetime, span: dt.timedelta, args, rng: random.Random):
    docs = args.documents_per_location
    weights = [w for _, _, w in OUTCOMES]
    for i in range(count):
        at = start + span * ((i + rng.random()) / count)
        loc, j = rng.randrange(args.locations), rng.randrange(docs)
        outcome, status, _ = rng.choices(OUTCOMES, weights)[0]
        waited = min(int(rng.lognormvariate(7.5, 2.0)), 86_400_000)
        yield (at, loc * docs + j + 1, "invoice", location(loc), f"inv-{loc}-{j}", 1,
               outcome, status, rng.randrange(50, 400), rng.choice((1, 1, 1, 2, 3)),
               rng.randrange(1, 5), waited)


def fill(url: str, backend: str, table: str, columns, rows) -> int:
    """Insert ``rows`` into ``table`` in bulk; return how many."""
    n = 0
    if backend == "sqlite":
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("PRAGMA synchronous=OFF")  # the fill only; the service sets FULL
        sql = (f"INSERT INTO {table} ({', '.join(columns)}) "
               f"VALUES ({', '.join('?' * len(columns))})")
        batch = []
        for row in rows:
            batch.append(tuple(_sqlite(v) for v in row))
            if len(batch) == CHUNK:
                n += _sqlite_batch(conn, sql, batch)
                batch = []
        n += _sqlite_batch(conn, sql, batch)
        conn.close()
        return n
    import psycopg

    plain = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain) as conn, conn.cursor() as cur, \
            cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
            n += 1
    return n


def _sqlite(value):
    if isinstance(value, dt.datetime):  # as db.UTCDateTime stores it
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
    return value


def _sqlite_batch(conn, sql: str, batch: list) -> int:
    conn.execute("BEGIN")
    conn.executemany(sql, batch)
    conn.execute("COMMIT")
    return len(batch)


def seen_matches(engine, seen: dict) -> bool:
    """Whether the overview's 30 days equal a direct count of the rows (nothing pruned)."""
    import sqlalchemy as sa

    from service.store.db import delivery_log, events

    e, log = events.c, delivery_log.c
    since = seen["daily"][0]["start"]
    with engine.connect() as conn:
        direct = conn.execute(sa.select(
            sa.func.sum(e.views), sa.func.sum(sa.case((e.forward, 0), else_=e.views)))
            .where(e.received_at >= since)).one()
        sent = conn.execute(sa.select(sa.func.sum(log.views_covered)).where(
            log.at >= since, log.outcome == "delivered")).scalar()
    shown = [sum(day[k] for day in seen["daily"]) for k in ("received", "filtered",
                                                             "delivered")]
    return shown == [int(direct[0]), int(direct[1]), int(sent)]


def timed(call, *, warmup: int, requests: int) -> dict:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"p50": percentile(times, 50), "p99": percentile(times, 99), "max": times[-1]}


def run_store(backend: str, args) -> list[dict]:
    rng = random.Random(args.seed)
    with fresh_store(backend, "overview", pg_url=args.pg_url, keep=args.keep) as scratch:
        url = scratch.url
        engine = create_engine(normalize_database_url(url))
        upgrade(engine)
        started = time.perf_counter()
        filled = {
            "documents": fill(url, backend, "documents", DOC_COLUMNS, documents(args, rng)),
            "events": fill(url, backend, "events", EVENT_COLUMNS,
                           events(args.events, NOW - SPAN, SPAN, args, rng)),
            "delivery_log": fill(url, backend, "delivery_log", LOG_COLUMNS,
                                 log_rows(args.log_rows, NOW - SPAN, SPAN, args, rng)),
        }
        if backend == "postgresql":  # what autovacuum does on its own after a bulk load
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE")
        print(f"{backend}: filled {filled} in {time.perf_counter() - started:.0f} s",
              flush=True)
        store = Store(engine)
        started = time.perf_counter()
        # The last fold a minute ago: the watermark is at NOW - 4 min (the lag, 3 min).
        chunks = store.fold_stats(now=NOW - dt.timedelta(minutes=1))
        catch_up = time.perf_counter() - started
        results = []
        for case in ("quiet", "busy"):
            if case == "busy":
                tail = int(args.tail_rate * TAIL.total_seconds())
                fill(url, backend, "events", EVENT_COLUMNS,
                     events(tail, NOW - TAIL, TAIL, args, rng))
                fill(url, backend, "delivery_log", LOG_COLUMNS,
                     log_rows(tail, NOW - TAIL, TAIL, args, rng))
            seen = store.overview(now=NOW)
            exact = seen_matches(engine, seen)
            took = timed(lambda: store.overview(now=NOW), warmup=args.warmup,
                         requests=args.requests)
            results.append({
                "backend": backend, "case": case, **took,
                "received": sum(e["received"] for e in seen["daily"]), "exact": exact,
                "samples": seen["latency"]["samples"], "queue": seen["queue"],
                "filled": filled, "catch_up_s": catch_up, "chunks": chunks,
            })
            print(f"{backend} {case}: p50 {took['p50']:.1f} ms, p99 {took['p99']:.1f} ms",
                  flush=True)
        started = time.perf_counter()
        store.fold_stats(now=NOW)
        results[-1]["steady_fold_ms"] = (time.perf_counter() - started) * 1000
        engine.dispose()
        return results


def report(rows: list[dict], args, facts, notes, started) -> str:
    table = markdown_table(
        ["store", "case", "live tail", "overview p50 ms", "p99 ms", "max ms",
         "views in 30 days", "sends in 24 h", "= direct count"],
        [[r["backend"], r["case"],
          "4 min of the spread" if r["case"] == "quiet"
          else f"{args.tail_rate} views/s for 4 min",
          f"{r['p50']:.1f}", f"{r['p99']:.1f}", f"{r['max']:.1f}", f"{r['received']:,}",
          f"{r['samples']:,}", "yes" if r["exact"] else "**NO**"] for r in rows])
    folds = markdown_table(
        ["store", "first fold (30 days) s", "ranges", "steady fold (1 min at tail rate) ms",
         "rows filled"],
        [[r["backend"], f"{r['catch_up_s']:.1f}", r["chunks"],
          f"{r.get('steady_fold_ms', 0):.0f}",
          ", ".join(f"{k} {v:,}" for k, v in r["filled"].items())]
         for r in rows if r["case"] == "busy"])
    lines = report_head("Overview benchmark (`Store.overview` on a big store)",
                        started=started, short=args.events < 1_000_000) + [
        table, "",
        f"- {args.requests} calls after {args.warmup} warm-up calls, in-process, one at a "
        "time; wall time per call (nearest-rank percentiles). The goal for the page is a "
        "p99 under 200 ms.",
        "- = direct count: the 30 days' received, filtered and delivered views equal "
        "SUM()s over the events and the delivery log themselves (the script fails if not).",
        "- queue by state (both cases): "
        + "; ".join(f"{r['backend']} {r['queue']}" for r in rows if r["case"] == "busy"),
        "", folds, "",
        "- first fold: what the first forwarder does after the upgrade (30 days into the "
        "hourly rollup, in ranges of at most 6 hours, each its own short write); steady "
        "fold: the forwarder's once-a-minute fold, here of a minute of the busy tail.",
        "",
        "## Set-up", "",
        f"- {args.locations:,} locations x {args.documents_per_location} documents; "
        f"{args.events:,} events and {args.log_rows:,} delivery-log rows spread evenly over "
        f"the 30 days before {NOW:%Y-%m-%d %H:%M} UTC, written in bulk after the service's "
        "migrations (see the script's docstring for the mix).",
        "- PostgreSQL: `VACUUM ANALYZE` after the bulk load (autovacuum's work); SQLite: "
        "as the service leaves it (no ANALYZE).",
        "",
    ]
    return "\n".join(lines + machine_section(facts, notes)) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", default="sqlite,postgresql")
    p.add_argument("--locations", type=int, default=10_000)
    p.add_argument("--documents-per-location", type=int, default=25)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--log-rows", type=int, default=1_000_000)
    p.add_argument("--tail-rate", type=int, default=100, help="views/s in the busy tail")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--seed", type=int, default=15)
    store_options(p, "results-overview.md")
    args = p.parse_args(argv)
    backends = args.backends.split(",")
    check_names(p, backends, ("sqlite", "postgresql"), "backend")
    notes: list[str] = []
    started = dt.datetime.now(UTC)
    backends, facts = usable_backends(backends, args.pg_url, notes)
    rows = [r for backend in backends for r in run_store(backend, args)]
    write_report(report(rows, args, facts, notes, started), args.output, marker=MARKER)
    return 0 if all(r["exact"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
