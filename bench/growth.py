"""Growth benchmark: do the pixel, ingest, claim and prune cost more on a big store?

For each store (SQLite, PostgreSQL: ``--backends``) it prepares two databases with the
service's migrations and fills them inside the database (``bench/growth_data.py``):

- ``big``: ``--events`` events, ``--documents`` documents and ``--log-rows`` delivery-log
  rows spread over 30 days plus ``--rounds`` hours (the issue's goal: 10,000,000 /
  1,000,000 / 5,000,000), ``--pending`` documents pending and due;
- ``small``: the same ``--pending`` documents (and 8,000 delivered ones), and only the
  oldest ``--rounds`` hours of events and log rows, at the big store's rate: the same
  hourly work with none of the history.

Then, in ``--rounds`` interleaved rounds (every case in turn, the order reversed on even
rounds), for the bare Flask app (``bench/bare_app.py``) and each prepared database:

- claim: ``Store.claim_due(limit=FORWARD_CONCURRENCY)`` (what the forwarder calls), timed
  in-process ``--claims`` times, each lease given back (untimed) so the next finds work; a
  rate limiter with an unlimited budget, so every claim reads and writes ``rate_limits``;
- prune: the hourly prune (``deliverylog.prune`` and ``retention.prune_events``) of the
  next hour past 30 days: an hour's rows in both databases;
- pixel and ingest: gunicorn with the shipped settings, wrk on ``GET /v1/pixel/<token>.gif``
  then on one-event ``POST /v1/events`` (bench/compare.py's scripts), ``--warmup`` then
  ``--duration`` seconds each; every 2xx is checked against the rows the database gained.

The goal: each cost on ``big`` within 10% of ``small`` (throughput at least 0.9x; claim
and prune time at most 1.1x). Results: stdout and ``bench/results-growth.md``.

    .venv/bin/python bench/growth.py --events 1000000 --documents 100000 --log-rows 500000
    .venv/bin/python bench/growth.py                    # 10M / 1M / 5M: fills for minutes
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import secrets
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402 - after the path set-up, so `python bench/growth.py` works
    OUT,
    SERVICE_APP,
    bench_secrets,
    check_names,
    fresh_store,
    machine_section,
    markdown_table,
    percentile,
    report_head,
    run_matrix,
    store_options,
    usable_backends,
    web_server,
    write_report,
)
from compare import INGEST_LUA  # noqa: E402
from growth_data import Plan, fill  # noqa: E402
from pixel import BARE_APP, WRK_SCRIPT, _configs, _csv, mint_paths, run_wrk  # noqa: E402

from service.store.deliverylog import prune as prune_log  # noqa: E402
from service.store.engine import create_engine, upgrade  # noqa: E402
from service.store.queue import Store  # noqa: E402
from service.store.ratelimit import StoreLimiter  # noqa: E402
from service.store.retention import prune_events  # noqa: E402
from service.store.viewrows import event_id_floor  # noqa: E402

DAYS_HOURS = 30 * 24
SMALL_DONE = 8_000  # delivered documents in the small store, beside the pending ones
MARKER = "## What the numbers say"


def parse_args(argv=None) -> argparse.Namespace:
    cpus = os.cpu_count() or 1
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--backends", type=_csv, default=["sqlite", "postgresql"])
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--documents", type=int, default=1_000_000)
    p.add_argument("--log-rows", type=int, default=5_000_000)
    p.add_argument("--pending", type=int, default=2_000, help="pending, due documents")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--claims", type=int, default=200, help="timed claims per case")
    p.add_argument("--claim-limit", type=int, default=16, help="FORWARD_CONCURRENCY")
    p.add_argument("--configs", type=_configs, default=_configs(f"{2 * cpus}x16"))
    p.add_argument("--duration", type=int, default=5, help="measured seconds per wrk run")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--connections", type=int, default=32, help="wrk -c")
    p.add_argument("--wrk-threads", type=int, default=2, help="wrk -t")
    p.add_argument("--timeout", type=int, default=10, help="wrk --timeout (s)")
    p.add_argument("--invoices", type=int, default=1000, help="distinct pixel tokens")
    p.add_argument("--locations", type=int, default=20)
    store_options(p, "results-growth.md")
    args = p.parse_args(argv)
    check_names(p, args.backends, ("sqlite", "postgresql"), "backend")
    return args


def plans(args, now: dt.datetime) -> dict[str, Plan]:
    hours = DAYS_HOURS + args.rounds
    share = args.rounds / hours  # the oldest hours' part of the events and log rows
    return {
        "big": Plan(now=now, events=args.events, documents=args.documents,
                    log_rows=args.log_rows, pending=args.pending, hours=hours),
        "small": Plan(now=now, events=max(1, round(args.events * share)),
                      documents=args.pending + SMALL_DONE,
                      log_rows=max(1, round(args.log_rows * share)), pending=args.pending,
                      hours=args.rounds, before=DAYS_HOURS),
    }


def time_claims(store: Store, args) -> dict:
    """``claim_due`` timed ``args.claims`` times (after 5 untimed); each lease released."""
    times, claimed = [], 0
    for k in range(args.claims + 5):
        now = dt.datetime.now(dt.UTC)
        started = time.perf_counter()
        claims = store.claim_due(now=now, limit=args.claim_limit)
        took = (time.perf_counter() - started) * 1000
        store.release(claims, now=now)
        if k >= 5:
            times.append(took)
            claimed += len(claims)
    times.sort()
    return {"claim_p50": percentile(times, 50), "claim_p99": percentile(times, 99),
            "claim_mean": statistics.fmean(times), "claimed": claimed / args.claims}


def time_prune(engine, now: dt.datetime, hours_left: int) -> dict:
    """The hourly prune (both functions, as the forwarder runs them), timed: of the
    oldest hour left, ``hours_left`` hours of rows older than 30 days staying."""
    older_than = now - dt.timedelta(hours=DAYS_HOURS + hours_left)
    started = time.perf_counter()
    log_rows = prune_log(engine, older_than=older_than)
    log_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    event_rows = prune_events(engine, older_than=older_than)
    events_ms = (time.perf_counter() - started) * 1000
    return {"log_prune_ms": log_ms, "log_pruned": log_rows, "events_prune_ms": events_ms,
            "events_pruned": event_rows}


def stored_since(store, floor: str) -> int:
    """Views stored since the event id ``floor`` (a range of the primary key: cheap)."""
    import sqlalchemy as sa

    with store.engine.connect() as conn:
        return conn.execute(sa.text("SELECT coalesce(sum(views), 0) FROM events "
                                    "WHERE id >= :floor"), {"floor": floor}).scalar()


def wrk_once(args, port: int, files: dict, endpoint: str, duration: int) -> dict:
    """One wrk run on ``endpoint`` (pixel: the minted paths; ingest: a new nonce, so no
    eventId repeats)."""
    wrk = SimpleNamespace(wrk_threads=args.wrk_threads, connections=args.connections,
                          timeout=args.timeout)
    if endpoint == "pixel":
        return run_wrk(wrk, port, files["paths"], files["pixel_lua"], duration)
    lines = [files["key"], secrets.token_hex(4)] + files["locations"]
    files["ingest_settings"].write_text("\n".join(lines) + "\n")
    return run_wrk(wrk, port, files["ingest_settings"], files["ingest_lua"], duration)


def web_load(args, server, files: dict) -> dict:
    out = {}
    for endpoint in ("pixel", "ingest"):
        if args.warmup:
            wrk_once(args, server.port, files, endpoint, args.warmup)
        r = wrk_once(args, server.port, files, endpoint, args.duration)
        out[f"{endpoint}_rps"], out[f"{endpoint}_ok"] = r["rps"], r["ok"]
        out[f"{endpoint}_p99"] = r["p99"]
        out[f"{endpoint}_errors"] = r["non2xx"] + r["sock_errors"] + r["timeouts"]
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    notes: list[str] = []
    backends, facts = usable_backends(args.backends, args.pg_url, notes)
    print("\n".join(f"{k}: {v}" for k, v in facts), flush=True)
    keys = bench_secrets()
    OUT.mkdir(parents=True, exist_ok=True)
    # Files of this run only: another run's paths are signed with other keys (answered
    # 200 but recorded as invalid tokens).
    tag = f"growth-{os.getpid()}"
    files = {"paths": OUT / f"{tag}-pixel-paths.txt", "pixel_lua": OUT / f"{tag}-pixel.lua",
             "ingest_lua": OUT / f"{tag}-ingest.lua",
             "ingest_settings": OUT / f"{tag}-ingest-settings.txt",
             "key": keys["INGEST_API_KEYS"],
             "locations": [f"loc-{i:03d}" for i in range(args.locations)]}
    files["paths"].write_text("\n".join(mint_paths(keys, args.invoices, args.locations)) + "\n")
    files["pixel_lua"].write_text(WRK_SCRIPT)
    files["ingest_lua"].write_text(INGEST_LUA)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    fills: dict[tuple[str, str], dict] = {}
    with ExitStack() as stack:
        cases: list = [None]  # the bare app
        for backend in backends:
            for size, plan in plans(args, now).items():
                scratch = stack.enter_context(fresh_store(backend, f"growth_{size}",
                                                          pg_url=args.pg_url, keep=args.keep))
                engine = create_engine(scratch.url)
                upgrade(engine)
                engine.dispose()
                print(f"{backend} {size}: filling {plan} ...", flush=True)
                fills[backend, size] = fill(scratch.url, plan)
                print(f"  {fills[backend, size]}", flush=True)
                scratch.size = size
                cases.append(scratch)

        def case(config, scratch, rnd: int) -> dict:
            workers, threads = config
            row = {"server": "bare" if scratch is None else scratch.backend,
                   "size": "-" if scratch is None else scratch.size}
            if scratch is not None:
                engine = create_engine(scratch.url)
                limiter = StoreLimiter(engine.dialect.name, burst=(10 ** 9, 10.0),
                                       daily=2 * 10 ** 9)
                row.update(time_claims(Store(engine, limiter=limiter), args))
                row.update(time_prune(engine, now, args.rounds - rnd))
                engine.dispose()
            floor = event_id_floor(dt.datetime.now(dt.UTC))
            with web_server(f"growth-{row['server']}-{row['size']}", scratch, keys,
                            workers=workers, threads=threads,
                            app=BARE_APP if scratch is None else SERVICE_APP) as server:
                row.update(web_load(args, server, files))
            if scratch is not None:
                time.sleep(1)  # the last group commit
                row["stored"] = stored_since(scratch, floor)
                answered = row["pixel_ok"] + row["ingest_ok"]
                # Warm-up requests are stored too; rows below the measured 2xx are lost.
                row["stored_ok"] = row["stored"] >= answered
            return row

        rows = run_matrix(args.configs, case, inner=cases, notes=notes, rounds=args.rounds,
                          where=lambda c, s, r: f"round {r} {'bare' if s is None else s.url}",
                          describe=lambda r: f"  {r}")
    notes += [f"round {r['round']} {r['server']} {r['size']}: STORED {r['stored']} rows for "
              f"{r['pixel_ok'] + r['ingest_ok']} 2xx" for r in rows if not r.get("stored_ok",
                                                                               True)]
    notes.append("load average at the end: "
                 + " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} CPUs")
    write_report(report(args, rows, fills, notes, facts, started), args.output,
                 marker=MARKER)
    ok = rows and all(r.get("stored_ok", True) for r in rows) and not any(
        "FAILED" in n for n in notes)
    return 0 if ok else 1


def _median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows) if rows else float("nan")


def report(args, rows, fills, notes, facts, started) -> str:
    bare = {r["round"]: r for r in rows if r["server"] == "bare"}
    for r in rows:  # ratios to the bare app of the same round
        ref = bare.get(r["round"])
        if r["server"] != "bare" and ref:
            r["pixel_vs_bare"] = r["pixel_rps"] / ref["pixel_rps"]
            r["ingest_vs_bare"] = r["ingest_rps"] / ref["ingest_rps"]
    backends = list(dict.fromkeys(r["server"] for r in rows if r["server"] != "bare"))
    per = {(b, s): [r for r in rows if r["server"] == b and r["size"] == s]
           for b in backends for s in ("small", "big")}
    detail = []
    for (b, s), rs in per.items():
        if not rs:
            continue
        detail.append([b, s, f"{_median(rs, 'pixel_rps'):,.0f}",
                       f"{_median(rs, 'pixel_vs_bare'):.2f}x",
                       f"{_median(rs, 'ingest_rps'):,.0f}",
                       f"{_median(rs, 'ingest_vs_bare'):.2f}x",
                       f"{_median(rs, 'claim_p50'):.2f}", f"{_median(rs, 'claim_p99'):.2f}",
                       f"{_median(rs, 'claimed'):.1f}",
                       f"{_median(rs, 'log_prune_ms'):.0f} ({_median(rs, 'log_pruned'):,.0f})",
                       f"{_median(rs, 'events_prune_ms'):.0f} "
                       f"({_median(rs, 'events_pruned'):,.0f})"])
    growth = []
    for b in backends:
        small, big = per[b, "small"], per[b, "big"]
        if not small or not big:
            continue
        checks = [("pixel GET req/s", "pixel_rps", True),
                  ("POST /v1/events req/s", "ingest_rps", True),
                  ("claim_due p50", "claim_p50", False),
                  ("hourly prune: delivery log", "log_prune_ms", False),
                  ("hourly prune: events", "events_prune_ms", False)]
        for name, key, higher_better in checks:
            value = _median(big, key) / _median(small, key)
            ok = value >= 0.9 if higher_better else value <= 1.1
            growth.append([b, name, f"{value:.2f}x", "yes" if ok else "**NO**"])
    scale = (f"{args.events:,} events, {args.documents:,} documents, {args.log_rows:,} "
             "delivery-log rows")
    fill_lines = [f"- {b} {s}: " + ", ".join(f"{k} {v:.0f} s" for k, v in t.items())
                  for (b, s), t in fills.items()]
    lines = report_head(f"Growth benchmark: costs on a big store ({scale}) against a small one",
                        started=started, short=args.events < 10_000_000) + [
        "## Big against small (medians of the rounds)", "",
        markdown_table(["store", "cost", "big / small", "within 10%"], growth), "",
        "## Per store", "",
        markdown_table(["store", "size", "pixel req/s", "vs bare", "ingest req/s", "vs bare",
                        "claim p50 ms", "claim p99 ms", "claimed / call",
                        "log prune ms (rows)", "events prune ms (rows)"], detail), "",
        f"- {args.rounds} rounds; in each, the bare app and every database in turn (order "
        "reversed on even rounds). Medians across rounds; ratios to bare use the bare "
        "app of the same round.",
        f"- pixel / ingest: wrk -t{args.wrk_threads} -c{args.connections}, "
        f"{args.warmup} s warm-up + {args.duration} s each, gunicorn "
        + ", ".join(f"{w}x{t}" for w, t in args.configs)
        + " (WEB_CONCURRENCY x GUNICORN_THREADS); every 2xx checked against the rows stored.",
        f"- claim: {args.claims} calls of `Store.claim_due(limit={args.claim_limit})` after 5 "
        "warm-up calls, in-process, each lease released after it (not timed); "
        f"{args.pending:,} pending documents due in both databases.",
        "- prune: the forwarder's hourly `deliverylog.prune` then `retention.prune_events`, "
        "each round the next hour past 30 days (an hour's rows in both databases).",
        "", "## Fill (seconds, inside the database: bench/growth_data.py)", "", *fill_lines,
        "",
    ]
    return "\n".join(lines + machine_section(facts, notes)) + "\n"


if __name__ == "__main__":
    sys.exit(main())
