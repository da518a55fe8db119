"""A store the size of a large install, for timing read pages: ``fill(engine, ...)``.

``fill`` writes rows straight into a migrated, empty store (SQLite or PostgreSQL), in bulk:
``executemany`` in chunks of 20,000 on SQLite, ``COPY`` on PostgreSQL. It takes about a
minute for the defaults (10,000 locations, 1,000,000 events) on a 2-CPU machine. The rows
are what the service itself would have stored, so every read path works on them:

- locations: a token (an encrypted PIT, or an OAuth pair) for most; about 4% have views
  but no token, 1% an invalid token, 0.5% an inactive one, 3% a token and no views yet;
- rate limits: a row per location with a token, about 1% paused until ``now`` + 1 hour;
- views per location follow a power law (the busiest has about 3% of all events, the
  median a few dozen), about 4 per document; 1 in 8 is a machine open (filtered, kept
  without a document);
- documents: delivered (idle) for the most part, a few pending; 8% of the locations with
  tokens have dead documents (HighLevel answered 404); the views of locations without a
  usable token wait (blocked);
- the delivery log: one attempt per document that was sent (delivered, permanent,
  no_token or token_invalid), with HighLevel's message and trace id where it gave them;
- what the forwarder keeps (``service.store.seen``): every location with views known,
  every event counted by verdict.

Deterministic for a given ``seed``. ``python bench/console_data.py URL`` fills the store at
URL (after ``flask --app service db upgrade`` on it) and prints the counts.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VERDICTS = [("human", 0.875), ("proxy_open", 0.05), ("machine_prefetch", 0.04),
            ("scanner", 0.02), ("bot", 0.015)]
CHUNK = 20_000
FERNET_TOKEN = "pit-bench-0123456789abcdef"


@dataclass
class Filled:
    """What ``fill`` wrote: the location ids by what they show, and row counts."""

    states: dict[str, list[str]] = field(default_factory=dict)  # state -> location ids
    counts: dict[str, int] = field(default_factory=dict)  # table -> rows
    busiest: str = ""  # the location with the most documents


def _uuid7(ms: int, rnd: random.Random) -> str:
    ms_hex = f"{ms & 0xFFFFFFFFFFFF:012x}"
    bits = rnd.getrandbits(74)
    return (f"{ms_hex[:8]}-{ms_hex[8:]}-7{bits >> 62:03x}-{0x8000 | (bits >> 48) & 0x3FFF:04x}-"
            f"{bits & 0xFFFFFFFFFFFF:012x}")


def _categories(n: int, rnd: random.Random) -> list[str]:
    """What each location is: its state in the store (``LOCATION_STATES``), or ``idle``
    (a token and no views)."""
    pool = (["no_token"] * 400 + ["invalid"] * 100 + ["inactive"] * 50 + ["paused"] * 100
            + ["dead"] * 800 + ["idle"] * 300)
    scale = n / 10_000
    cats = [c for c in pool if rnd.random() < scale] if n < 10_000 else pool
    cats = cats[: n - 1]
    cats += ["ok"] * (n - len(cats))
    rnd.shuffle(cats)
    return cats


def generate(*, locations: int, events: int, now: dt.datetime, seed: int,
             access_token: str, refresh_token: str):
    """Build every row in memory: (table, columns, rows) triples, and the ``Filled``."""
    rnd = random.Random(seed)
    ids = [f"loc{n:05d}" for n in range(locations)]
    cats = _categories(locations, rnd)
    filled = Filled(states={})
    for loc, cat in zip(ids, cats, strict=True):
        filled.states.setdefault("ok" if cat == "idle" else cat, []).append(loc)
    # Events per location: a power law over a shuffled ranking.
    ranks = list(range(1, locations + 1))
    rnd.shuffle(ranks)
    weights = [0.0 if cat == "idle" else r ** -0.8 for r, cat in zip(ranks, cats, strict=True)]
    total = sum(weights)
    per_loc = [int(events * w / total) for w in weights]
    per_loc[max(range(locations), key=lambda i: weights[i])] += events - sum(per_loc)
    filled.busiest = ids[max(range(locations), key=lambda i: per_loc[i])]

    start = now - dt.timedelta(days=30)
    span_ms = 30 * 86400 * 1000 - 3_600_000
    loc_rows, rate_rows, doc_rows, log_rows, event_rows = [], [], [], [], []
    verdict_names = [v for v, _ in VERDICTS]
    verdict_weights = [w for _, w in VERDICTS]
    doc_id = 0
    for i, (loc, cat) in enumerate(zip(ids, cats, strict=True)):
        if cat != "no_token":
            oauth = i % 3 == 0
            status = {"invalid": "invalid", "inactive": "inactive"}.get(cat, "active")
            loc_rows.append((
                loc, "oauth" if oauth else "pit", access_token,
                refresh_token if oauth else None,
                now + dt.timedelta(hours=12) if oauth else None, "cmp0001" if oauth else None,
                status, 1, 2 if status == "invalid" else 0,
                {"invalid": "Invalid JWT", "inactive": "Location is not active"}.get(cat),
                now + dt.timedelta(minutes=30) if status == "inactive" else None, start, start))
            paused = cat == "paused"
            rate_rows.append((loc, 100, 10_000, 200_000, 3, now + dt.timedelta(seconds=5),
                              120, now + dt.timedelta(hours=6),
                              now + dt.timedelta(hours=1) if paused else None,
                              "burst" if paused else None, now))
        n_events = per_loc[i]
        if not n_events:
            continue
        n_docs = max(1, n_events // 4)
        # Event times for the location, in order: the documents' views come from them.
        times = sorted(rnd.randrange(span_ms) for _ in range(n_events))
        doc_of = [rnd.randrange(n_docs) for _ in range(n_events)]
        first_doc = doc_id
        seqs = [0] * n_docs
        last_ms = [0] * n_docs
        first_ms = [0] * n_docs
        for ms, d in zip(times, doc_of, strict=True):
            verdict = rnd.choices(verdict_names, verdict_weights)[0]
            forward = verdict == "human"
            at = start + dt.timedelta(milliseconds=ms)
            row_id = seq = None
            if forward:
                seqs[d] += 1
                seq, row_id = seqs[d], first_doc + d + 1
                last_ms[d] = ms
                first_ms[d] = first_ms[d] or ms
            event_rows.append((
                _uuid7(int(start.timestamp() * 1000) + ms, rnd), None, row_id, seq,
                "invoice", loc, f"inv{first_doc + d:07d}", at, at, "pixel",
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64)", "203.0.113.0", verdict,
                None if forward else "ua:bench", forward, None, 1))
        for d in range(n_docs):
            doc_id += 1
            views = seqs[d]
            last = start + dt.timedelta(milliseconds=last_ms[d] or 0)
            if cat in ("no_token", "invalid", "inactive"):
                status, sent, failed, outcome = "blocked", 0, 0, (
                    "no_token" if cat == "no_token" else "token_invalid")
            elif cat == "dead" and d % 10 == 0:
                status, sent, failed, outcome = "dead", 0, views, "permanent"
            elif rnd.random() < 0.02 or cat == "paused" and d % 5 == 0:
                status, sent, failed, outcome = "pending", 0, 0, None
            else:
                status, sent, failed, outcome = "idle", views, 0, "delivered"
            if views == 0:  # only machine opens: the document row is never made
                continue
            sent_at = last + dt.timedelta(seconds=2)
            doc_rows.append((
                doc_id, "invoice", loc, f"inv{doc_id - 1:07d}", status, views,
                max(sent, failed), sent, failed,
                now if status in ("pending", "blocked") else sent_at + dt.timedelta(seconds=60),
                None, None, 0 if status == "idle" else 1,
                start + dt.timedelta(milliseconds=first_ms[d]) if status == "pending" else None,
                sent_at if outcome else None, sent_at if status == "idle" else None,
                sent_at + dt.timedelta(seconds=60), 200 if status == "idle" else (
                    404 if status == "dead" else None),
                "Invoice not found" if status == "dead" else None,
                "permanent" if status == "dead" else None, None, sent_at))
            if outcome:
                log_rows.append((
                    sent_at, doc_id, "invoice", loc, f"inv{doc_id - 1:07d}", 1, outcome,
                    {"delivered": 200, "permanent": 404}.get(outcome),
                    "Invoice not found" if outcome == "permanent" else None,
                    f"trace-{doc_id}" if outcome in ("delivered", "permanent") else None,
                    120, views, views, None))
    event_rows.sort(key=lambda r: r[0])
    # What the forwarder keeps (``service.store.seen``), as after it has run: every
    # location with views known, and every event counted.
    counted: dict[tuple[str, str], int] = {}
    for row in event_rows:
        counted[row[5], row[12]] = counted.get((row[5], row[12]), 0) + row[16]
    known_rows = [(loc, start) for loc in sorted({loc for loc, _ in counted})]
    count_rows = [(loc, verdict, n) for (loc, verdict), n in sorted(counted.items())]
    mark_rows = [("view_counts", event_rows[-1][0] if event_rows else "", now)]
    log_rows.sort(key=lambda r: r[0])
    log_rows = [(n + 1, *r) for n, r in enumerate(log_rows)]
    tables = [
        ("locations", "location_id token_kind access_token refresh_token expires_at "
         "company_id status generation unauthorized_count last_error retry_at created_at "
         "updated_at", loc_rows),
        ("rate_limits", "resource burst_max interval_ms daily_max used window_ends_at "
         "daily_used day_ends_at paused_until pause_reason updated_at", rate_rows),
        ("documents", "id kind location_id document_id status views_seq claimed_seq sent_seq "
         "failed_seq due_at locked_until lease_token attempts pending_since last_attempt_at "
         "last_sent_at quiet_until last_status last_error dead_reason last_request_id "
         "updated_at", doc_rows),
        ("events", "id event_key document_row seq kind location_id document_id viewed_at "
         "received_at source user_agent ip verdict verdict_reason forward request_id views",
         event_rows),
        ("delivery_log", "id at document_row kind location_id document_id attempt outcome "
         "http_status message trace_id latency_ms views_covered seq_to request_id", log_rows),
        ("known_locations", "location_id first_seen_at", known_rows),
        ("view_counts", "location_id verdict views", count_rows),
        ("rollups", "name through_id updated_at", mark_rows),
    ]
    filled.counts = {name: len(rows) for name, _, rows in tables}
    return tables, filled


def _sqlite_value(value):
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
    return value


def _write(engine, tables) -> None:
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        if engine.dialect.name == "sqlite":
            # The service's engine leaves BEGIN to SQLAlchemy (pysqlite in autocommit):
            # without one, every row would be a transaction of its own, and an fsync.
            cur.execute("BEGIN")
        for name, columns, rows in tables:
            cols = columns.split()
            if engine.dialect.name == "postgresql":
                with cur.copy(f"COPY {name} ({', '.join(cols)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            else:
                sql = (f"INSERT INTO {name} ({', '.join(cols)}) "
                       f"VALUES ({', '.join('?' * len(cols))})")
                for first in range(0, len(rows), CHUNK):
                    cur.executemany(sql, [tuple(_sqlite_value(v) for v in row)
                                          for row in rows[first:first + CHUNK]])
        if engine.dialect.name == "postgresql":
            for table in ("documents", "delivery_log"):  # the next id after the copied ones
                cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                            f"(SELECT coalesce(max(id), 1) FROM {table}))")
        cur.execute("COMMIT") if engine.dialect.name == "sqlite" else raw.commit()
        # The planner's statistics (and on PostgreSQL the visibility map, which index-only
        # scans need), as autovacuum would have them after a while in production.
        if engine.dialect.name == "postgresql":
            raw.driver_connection.autocommit = True
            try:
                cur.execute("VACUUM ANALYZE")
            finally:
                raw.driver_connection.autocommit = False
        else:
            cur.execute("ANALYZE")
    finally:
        raw.close()


def fill(engine, *, locations: int = 10_000, events: int = 1_000_000,
         now: dt.datetime | None = None, seed: int = 15,
         token_key: str | None = None) -> Filled:
    """Fill the migrated, empty store behind ``engine`` (SQLAlchemy) with ``locations``
    locations and about ``events`` events (see the module doc); return what it made.

    Tokens are encrypted with ``token_key`` (a Fernet key; the service's
    ``TOKEN_ENCRYPTION_KEYS``) so that the service can read them; a new key otherwise.
    Times are around ``now`` (default: the current time): rate-limit pauses last until
    ``now`` + 1 hour.
    """
    from cryptography.fernet import Fernet

    now = now or dt.datetime.now(dt.UTC)
    fernet = Fernet(token_key or Fernet.generate_key())
    tables, filled = generate(
        locations=locations, events=events, now=now, seed=seed,
        access_token=fernet.encrypt(FERNET_TOKEN.encode()).decode(),
        refresh_token=fernet.encrypt(b"refresh-bench-0123456789").decode())
    _write(engine, tables)
    return filled


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url", help="DATABASE_URL of a migrated, empty store")
    p.add_argument("--locations", type=int, default=10_000)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--token-key", help="TOKEN_ENCRYPTION_KEYS' first key")
    args = p.parse_args()
    from service.store.engine import create_engine

    engine = create_engine(args.url)
    try:
        filled = fill(engine, locations=args.locations, events=args.events,
                      token_key=args.token_key)
    finally:
        engine.dispose()
    print(filled.counts, {k: len(v) for k, v in filled.states.items()}, filled.busiest)


if __name__ == "__main__":
    main()
