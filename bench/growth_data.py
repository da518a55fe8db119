"""A store grown over 30 days, generated inside the database: ``fill(url, plan)``.

bench/console_data.py builds every row in Python and copies it in (about a minute per
million events): fine for its 1,000,000 events, too slow for 10,000,000. Here each table is
one ``INSERT ... SELECT`` over a generated sequence (PostgreSQL ``generate_series``, SQLite
a recursive CTE, with the journal off and ``synchronous=OFF`` during the fill only), so the
rows never leave the server. Then, as console_data does, the planner's statistics
(``ANALYZE``; PostgreSQL ``VACUUM ANALYZE``, autovacuum's work after a bulk load).

What the rows are (a function of their number, so both stores of a run agree):

- documents: one in ``step`` pending (``plan.pending`` in all), due in the last ten
  minutes; of the others 1% dead (HighLevel said 404), 0.5% blocked (no token), the rest
  idle (delivered), each last sent at a time spread over the 30 days; 10,000 locations;
- events: spread evenly over ``plan.hours`` up to ``plan.now`` (ids are UUIDv7 of their
  time, as the service makes them), 7 in 8 forwarded (about a document of their own
  location), 1 in 8 a machine open (filtered, no document), 1 in 5 with an ``eventId``;
  none belongs to a pending document (pending documents' views are recent);
- the delivery log: spread over the same hours, 93% delivered, the rest retries, 429s,
  permanent failures and parked sends.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from dataclasses import dataclass

LOCATIONS = 10_000
# Each n-th row's attributes come from n through these multipliers (co-prime with the
# sizes), which scatter neighbouring rows across documents and locations.
SCATTER = 7919
STATUS_HASH = 2654435761


@dataclass(frozen=True)
class Plan:
    """What to generate: counts, and the time span the events and log rows cover."""

    now: dt.datetime
    events: int
    documents: int
    log_rows: int
    pending: int
    hours: int  # events and log rows cover [now - before - hours, now - before)
    before: int = 0

    @property
    def step(self) -> int:  # one document in ``step`` is pending
        return max(2, self.documents // max(1, self.pending))


def _times(dialect: str):
    """SQL for a timestamp from an epoch-milliseconds expression, as UTCDateTime stores it."""
    if dialect == "postgresql":
        return lambda ms: f"to_timestamp(({ms}) / 1000.0)"
    return lambda ms: (f"(strftime('%Y-%m-%d %H:%M:%S', ({ms}) / 1000, 'unixepoch') "
                       f"|| printf('.%06d', (({ms}) % 1000) * 1000))")


def _fmt(dialect: str):
    """SQL for ``printf``-like zero-padded decimal and hex."""
    if dialect == "postgresql":
        return (lambda x, w: f"lpad(({x})::text, {w}, '0')",
                lambda x, w: f"lpad(to_hex(({x})::bigint), {w}, '0')")
    return (lambda x, w: f"printf('%0{w}d', {x})", lambda x, w: f"printf('%0{w}x', {x})")


def _series(dialect: str, count: int) -> str:
    if dialect == "postgresql":
        return f"generate_series(0::bigint, {count - 1}) AS s(n)"
    return "s"


def _with(dialect: str, count: int) -> str:
    if dialect == "postgresql":
        return ""
    return (f"WITH RECURSIVE s(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM s "
            f"WHERE n < {count - 1}) ")


def statements(dialect: str, plan: Plan) -> list[tuple[str, str]]:
    """(table, SQL) for each table, in the order they must run."""
    ts, (dec, hexa) = _times(dialect), _fmt(dialect)
    now_ms = int(plan.now.timestamp() * 1000)
    span_ms = plan.hours * 3_600_000
    start_ms = now_ms - plan.before * 3_600_000 - span_ms
    d, step = plan.documents, plan.step
    i = "(n + 1)"  # document ids 1..documents
    h = f"(({i} * {STATUS_HASH}) % 1000)"
    status = (f"CASE WHEN {i} % {step} = 0 THEN 'pending' WHEN {h} < 10 THEN 'dead' "
              f"WHEN {h} < 15 THEN 'blocked' ELSE 'idle' END")
    sent_ms = f"({now_ms} - 120000 - ({i} * {SCATTER}) % {30 * 86_400_000})"
    due_ms = f"({now_ms} - ({i} % 600) * 1000)"
    views = f"(1 + {i} % 5)"
    documents = f"""{_with(dialect, d)}
INSERT INTO documents (id, kind, location_id, document_id, status, views_seq, claimed_seq,
    sent_seq, failed_seq, due_at, attempts, pending_since, last_attempt_at, last_sent_at,
    quiet_until, last_status, last_error, dead_reason, updated_at)
SELECT {i}, 'invoice', 'loc' || {dec(f'{i} % {LOCATIONS}', 5)}, 'g' || {dec(i, 8)},
    st, {views},
    CASE st WHEN 'pending' THEN {views} - 1 ELSE {views} END,
    CASE st WHEN 'idle' THEN {views} WHEN 'pending' THEN {views} - 1 ELSE 0 END,
    CASE st WHEN 'dead' THEN {views} ELSE 0 END,
    CASE st WHEN 'pending' THEN {ts(due_ms)} WHEN 'blocked' THEN {ts(sent_ms)}
         ELSE {ts(f'{sent_ms} + 60000')} END,
    CASE st WHEN 'idle' THEN 0 ELSE 1 END,
    CASE st WHEN 'pending' THEN {ts(due_ms)} WHEN 'blocked' THEN {ts(sent_ms)} END,
    CASE st WHEN 'blocked' THEN NULL ELSE {ts(sent_ms)} END,
    CASE st WHEN 'dead' THEN NULL WHEN 'blocked' THEN NULL ELSE {ts(sent_ms)} END,
    {ts(f'{sent_ms} + 60000')},
    CASE st WHEN 'dead' THEN 404 WHEN 'blocked' THEN NULL ELSE 200 END,
    CASE st WHEN 'dead' THEN 'Invoice not found' END,
    CASE st WHEN 'dead' THEN 'permanent' END,
    {ts(sent_ms)}
FROM (SELECT n, {status} AS st FROM {_series(dialect, d)}) AS g"""
    # An event's document: n scattered over the documents, moved off a pending one.
    j = f"(((n * {SCATTER}) % {d}) + 1)"
    doc = f"(CASE WHEN {j} % {step} = 0 THEN {j} - 1 ELSE {j} END)"
    e_ms = f"({start_ms} + (n * {span_ms}) / {plan.events})"
    ms_hex = hexa(e_ms, 12)
    forward = "(n % 8 <> 0)"
    true_, false_ = ("true", "false") if dialect == "postgresql" else ("1", "0")
    events = f"""{_with(dialect, plan.events)}
INSERT INTO events (id, event_key, document_row, seq, kind, location_id, document_id,
    viewed_at, received_at, source, user_agent, ip, verdict, verdict_reason, forward, views)
SELECT substr(x, 1, 8) || '-' || substr(x, 9, 4) || '-7' || {hexa('(n * 7) % 4096', 3)}
        || '-' || {hexa('32768 + n % 16384', 4)} || '-' || {hexa(f'n + {0xB0 << 40}', 12)},
    CASE WHEN n % 5 = 1 THEN 'k' || n END,
    CASE WHEN fw THEN dr END, CASE WHEN fw THEN 1 END, 'invoice',
    'loc' || {dec(f'dr % {LOCATIONS}', 5)}, 'g' || {dec('dr', 8)}, at, at,
    CASE WHEN n % 5 = 1 THEN 'api' ELSE 'pixel' END,
    'Mozilla/5.0 (Windows NT 10.0; Win64; x64)', '203.0.113.0',
    CASE WHEN fw THEN 'human' ELSE 'scanner' END, CASE WHEN fw THEN NULL ELSE 'ua:bench' END,
    CASE WHEN fw THEN {true_} ELSE {false_} END, 1
FROM (SELECT n, {ms_hex} AS x, {doc} AS dr, {forward} AS fw, {ts(e_ms)} AS at
      FROM {_series(dialect, plan.events)}) AS g"""
    k = f"(((n * {SCATTER}) % {d}) + 1)"
    o = "(n % 100)"
    l_ms = f"({start_ms} + (n * {span_ms}) / {plan.log_rows})"
    log = f"""{_with(dialect, plan.log_rows)}
INSERT INTO delivery_log (at, document_row, kind, location_id, document_id, attempt,
    outcome, http_status, message, trace_id, latency_ms, views_covered, seq_to, waited_ms)
SELECT {ts(l_ms)}, {k}, 'invoice', 'loc' || {dec(f'{k} % {LOCATIONS}', 5)},
    'g' || {dec(k, 8)}, CASE WHEN {o} < 93 THEN 1 ELSE 2 END,
    CASE WHEN {o} < 93 THEN 'delivered' WHEN {o} < 96 THEN 'retry'
         WHEN {o} < 98 THEN 'rate_limited' WHEN {o} < 99 THEN 'permanent'
         ELSE 'no_token' END,
    CASE WHEN {o} < 93 THEN 200 WHEN {o} < 96 THEN 503 WHEN {o} < 98 THEN 429
         WHEN {o} < 99 THEN 404 END,
    CASE WHEN {o} BETWEEN 98 AND 98 THEN 'Invoice not found' END,
    CASE WHEN {o} < 99 THEN 'trace-' || n END,
    50 + n % 300, 1 + n % 3, 1 + n % 5, 200 + (n * 37) % 60000
FROM {_series(dialect, plan.log_rows)}"""
    return [("documents", documents), ("events", events), ("delivery_log", log)]


def fill(url: str, plan: Plan) -> dict[str, float]:
    """Generate ``plan``'s rows in the migrated, empty store at ``url`` (a SQLAlchemy
    URL); return the seconds each table took."""
    took: dict[str, float] = {}
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.split("///", 1)[1], isolation_level=None)
        try:
            # The fill only: the service's own connections set WAL and synchronous=FULL.
            conn.execute("PRAGMA journal_mode=OFF")
            conn.execute("PRAGMA synchronous=OFF")
            conn.execute("PRAGMA cache_size=-400000")  # 400 MB while the indexes grow
            for table, sql in statements("sqlite", plan):
                started = time.perf_counter()
                conn.execute("BEGIN")
                conn.execute(sql)
                conn.execute("COMMIT")
                took[table] = time.perf_counter() - started
            started = time.perf_counter()
            conn.execute("ANALYZE")
            conn.execute("PRAGMA journal_mode=WAL")
            took["analyze"] = time.perf_counter() - started
        finally:
            conn.close()
        return took
    import psycopg

    plain = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        for table, sql in statements("postgresql", plan):
            started = time.perf_counter()
            with conn.transaction():
                conn.execute(sql)
            took[table] = time.perf_counter() - started
        for table in ("documents", "delivery_log"):  # the next id after the generated ones
            conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                         f"(SELECT coalesce(max(id), 1) FROM {table}))")
        started = time.perf_counter()
        conn.execute("VACUUM ANALYZE")
        took["analyze"] = time.perf_counter() - started
    return took
