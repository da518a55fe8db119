"""Forwarder benchmark: how fast one real forwarder process drains a backlog to HighLevel.

For each store (a fresh SQLite file, a fresh PostgreSQL database) and each
FORWARD_CONCURRENCY (16 and 32 by default) it:

1. runs ``flask --app service db upgrade`` on an empty store;
2. stores one token per location with the service's ``TokenVault`` and preloads
   ``--documents`` due views (one per document, across ``--locations`` locations) with
   the service's ``Store.record_views``;
3. starts the fake HighLevel (``tests.fake_highlevel.FakeHighLevel``, the same server as
   ``python -m tests.fake_highlevel --latency 0.1 --no-rate-limit``) in its own process,
   answering every PATCH after ``--latency`` seconds, never with a 429;
4. starts one ``flask --app service forwarder`` process and waits (bounded) until every
   document is delivered, then stops it with SIGTERM.

It reports sends/s as HighLevel saw them, against the ceiling concurrency / latency,
and checks that HighLevel got exactly one PATCH per document. Results: stdout and
``bench/results-forward.md``.

    .venv/bin/python bench/forward.py                       # 2000 documents, 16 and 32
    .venv/bin/python bench/forward.py --documents 500 --backends sqlite
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402 - after the path set-up, so `python bench/forward.py` works
    ROOT,
    bench_secrets,
    check_names,
    command_line,
    flask,
    fresh_store,
    machine_section,
    markdown_table,
    percentile,
    preload_backlog,
    process_tree_cpu,
    run_checked,
    run_matrix,
    service_env,
    start,
    store_options,
    usable_backends,
    wait_documents_delivered,
    write_report,
)

UTC = dt.UTC


def _ints(value: str) -> list[int]:
    return [int(v) for v in value.split(",") if v.strip()]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--documents", type=int, default=2000, help="due documents to preload")
    p.add_argument("--locations", type=int, default=20, help="locations they spread over")
    p.add_argument("--concurrency", type=_ints, default=[16, 32],
                   help="FORWARD_CONCURRENCY values to run (comma list)")
    p.add_argument("--latency", type=float, default=0.1,
                   help="seconds the fake HighLevel takes to answer each PATCH")
    p.add_argument("--backends", default="sqlite,postgresql",
                   help="comma list of sqlite, postgresql")
    p.add_argument("--hl-rate-max", type=int, default=1_000_000,
                   help="X-RateLimit-Max the fake advertises per 10 s (it never answers 429); "
                        "HighLevel's real value is 100, which a rate limiter in the "
                        "forwarder would obey")
    p.add_argument("--validate-openapi", action="store_true",
                   help="let the fake validate each request against ../shared/highlevel-openapi "
                        "(costs the fake CPU on this machine)")
    p.add_argument("--timeout", type=float, default=None,
                   help="give up on a run after this many seconds (default: 20x the time the "
                        "ceiling would take, at least 120)")
    store_options(p, "results-forward.md")
    args = p.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    check_names(p, args.backends, ("sqlite", "postgresql"), "backend")
    if args.documents < 1 or args.locations < 1 or args.latency < 0:
        p.error("--documents and --locations must be >= 1, --latency >= 0")
    return args


# -- the fake HighLevel, in its own process ----------------------------------------------

def fake_process(latency: float, rate_max: int, validate: bool, pipe) -> None:
    """Serve the fake HighLevel on a free loopback port until told to stop; send stats back."""
    sys.path.insert(0, str(ROOT))
    from tests.fake_highlevel import FakeHighLevel

    spans: list[tuple[float, float]] = []  # (received, answered), time.monotonic()
    hl = FakeHighLevel(latency=latency, enforce_rate_limit=False, validate_openapi=validate,
                       rate_limit_max=rate_max,
                       on_request=lambda rec: spans.append((rec.at, time.monotonic())))
    hl.start("127.0.0.1", 0)
    pipe.send({"url": hl.url, "openapi": hl.validate_openapi})
    pipe.poll(3600)  # the parent's "stop" (bounded: the parent never waits that long)
    hl.stop()
    requests = list(hl.requests)
    docs = Counter((r.kind, r.document_id) for r in requests if r.status == 200)
    peak = level = 0
    for _, step in sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans]):
        level += step
        peak = max(peak, level)
    pipe.send({
        "requests": len(requests),
        "statuses": dict(Counter(r.status for r in requests)),
        "ok": sum(docs.values()), "distinct": len(docs),
        "repeated": sum(n - 1 for n in docs.values() if n > 1),
        "first": min((a for a, _ in spans), default=0.0),
        "last": max((b for _, b in spans), default=0.0),
        "peak_in_flight": peak,
        "violations": list(hl.violations)[:5],
    })


# -- one run ------------------------------------------------------------------------------

def run_one(args, backend: str, concurrency: int, keys: dict) -> dict:
    label = f"forward-{backend}-c{concurrency}"
    with fresh_store(backend, "forward", pg_url=args.pg_url, keep=args.keep) as store:
        env = service_env(store.url, keys, FORWARD_CONCURRENCY=concurrency,
                          RATE_LIMIT_BURST="1000000/10s", RATE_LIMIT_DAILY="100000000")
        run_checked(f"{label}-db-upgrade", flask("db", "upgrade"), env)
        preload_backlog(store, keys, locations=args.locations, documents=args.documents,
                        token=lambda n: f"bench-token-{n:03d}-xxxxxxxx")

        ctx = mp.get_context("spawn")
        pipe, child_end = ctx.Pipe()
        fake = ctx.Process(target=fake_process, daemon=True,
                           args=(args.latency, args.hl_rate_max, args.validate_openapi,
                                 child_end))
        fake.start()
        if not pipe.poll(60):
            raise RuntimeError("fake HighLevel did not start within 60 s")
        hello = pipe.recv()
        env["HIGHLEVEL_BASE_URL"] = hello["url"]

        ceiling = concurrency / args.latency if args.latency else float("inf")
        timeout = args.timeout or max(120.0, 20 * args.documents / min(ceiling, 1e6) + 60)
        t_spawn = time.monotonic()
        fwd = start(label, flask("forwarder"), env)
        log = fwd.stdout_path
        first: dict[str, float] = {}  # the forwarder's CPU when the first sends were in

        def at_poll(n: int) -> None:
            if n and not first:
                first.update(cpu=process_tree_cpu(fwd.pid), delivered=n)

        try:
            delivered, done_at = wait_documents_delivered(
                store, fwd, args.documents, deadline=t_spawn + timeout, interval=0.1,
                each=at_poll)
            fwd_cpu = process_tree_cpu(fwd.pid)
        finally:
            stop_s = fwd.stop()
            pipe.send("stop")
            hl = pipe.recv() if pipe.poll(30) else {}
            fake.join(10)
        outcomes = dict(Counter(
            row for row in _column(store, "SELECT outcome FROM delivery_log")))
        lat = sorted(float(x) for x in _column(
            store, "SELECT latency_ms FROM delivery_log WHERE outcome = 'delivered'"))
    window = (hl.get("last", 0.0) - hl.get("first", 0.0)) or float("nan")
    sends = hl.get("ok", 0)
    return {
        "backend": backend, "concurrency": concurrency, "documents": args.documents,
        "delivered": delivered, "finished": done_at is not None,
        "sends": sends, "sends_per_s": sends / window if sends else 0.0,
        "ceiling": ceiling,
        "wall": (done_at or time.monotonic()) - t_spawn,
        "peak_in_flight": hl.get("peak_in_flight", 0),
        "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99),
        "fwd_cpu": fwd_cpu / max(1e-9, (done_at or time.monotonic()) - t_spawn),
        "cpu_ms_per_send": (1000 * (fwd_cpu - first["cpu"]) / (delivered - first["delivered"])
                            if first and delivered > first["delivered"] else float("nan")),
        "stop_s": stop_s, "repeated": hl.get("repeated", 0),
        "hl_statuses": hl.get("statuses", {}), "outcomes": outcomes,
        "violations": hl.get("violations", []), "openapi": hello.get("openapi"),
        "log": log,
    }


def _column(store, sql: str) -> list:
    import sqlalchemy as sa

    with store.engine.connect() as conn:
        return list(conn.execute(sa.text(sql)).scalars())


def report(args, rows: list, notes: list, facts: list, started: dt.datetime) -> str:
    headers = ["store", "FORWARD_CONCURRENCY", "documents", "delivered", "sends/s",
               "ceiling/s", "% of ceiling", "peak in flight", "send p50 / p99 ms",
               "spawn to done s", "forwarder CPU (cores)", "CPU ms per send", "SIGTERM exit s",
               "extra PATCHes"]
    table = [[r["backend"], r["concurrency"], r["documents"],
              r["delivered"] if r["finished"] else f"{r['delivered']} (timed out)",
              f"{r['sends_per_s']:.1f}", f"{r['ceiling']:.0f}",
              f"{100 * r['sends_per_s'] / r['ceiling']:.0f}%",
              r["peak_in_flight"], f"{r['p50_ms']:.0f} / {r['p99_ms']:.0f}",
              f"{r['wall']:.1f}", f"{r['fwd_cpu']:.2f}", f"{r['cpu_ms_per_send']:.2f}",
              f"{r['stop_s']:.1f}",
              r["repeated"]]
             for r in rows]
    openapi = any(r["openapi"] for r in rows)
    lines = [
        "# Forwarder benchmark (`flask --app service forwarder`)",
        "",
        f"Run {started:%Y-%m-%d %H:%M} UTC with:",
        "",
        f"    {command_line()}",
        "",
        markdown_table(headers, table),
        "",
        "- sends/s: PATCHes answered 200 by the fake HighLevel, divided by the time from the "
        "first PATCH it received to the last answer it sent (forwarder start-up excluded).",
        f"- ceiling/s: FORWARD_CONCURRENCY / latency ({args.latency:g} s): every send slot "
        "busy all the time, zero overhead.",
        "- peak in flight: most PATCHes the fake was holding at once.",
        "- send p50 / p99: the forwarder's own `latency_ms` per delivered send (delivery log).",
        "- spawn to done: forwarder process start to every document delivered (includes "
        "Python start-up, about a second).",
        "- CPU ms per send: the forwarder process's CPU from the first delivered documents "
        "seen in the store to the last, over the documents delivered between (start-up "
        "excluded; bench/forward_profile.py breaks it down).",
        "- SIGTERM exit: from SIGTERM to the forwarder's exit, with nothing left to send.",
        "- extra PATCHes: PATCHes beyond one per document (at-least-once duplicates); 0 is "
        "expected here.",
        "",
        "## Set-up",
        "",
        f"- {args.documents} documents ({args.documents - args.documents // 10} invoices, "
        f"{args.documents // 10} estimates), one view each, across {args.locations} "
        "locations, each with a token stored by the service's `TokenVault`; views recorded by "
        "`Store.record_views`, all due at once.",
        f"- fake HighLevel: `tests.fake_highlevel.FakeHighLevel` in its own process, "
        f"{args.latency:g} s per answer, rate limiting off (never a 429), advertising "
        f"X-RateLimit-Max {args.hl_rate_max} per 10 s; OpenAPI validation "
        f"{'on' if openapi else 'off'}.",
        "- forwarder: one `flask --app service forwarder` process, RELAY_ENV=production, "
        "RATE_LIMIT_BURST=1000000/10s (so no limiter in the service holds it back), logs in "
        "`bench/out/`.",
        "- stores: a new SQLite file under `bench/out/`, a new PostgreSQL database (dropped "
        "afterwards).",
        "",
        *machine_section(facts, notes),
    ]
    return "\n".join(lines) + "\n"


def describe(r: dict) -> str:
    return (f"[{r['backend']}] c={r['concurrency']}: {r['sends_per_s']:.1f} sends/s of a "
            f"{r['ceiling']:.0f}/s ceiling ({100 * r['sends_per_s'] / r['ceiling']:.0f}%), "
            f"delivered {r['delivered']}/{r['documents']}, peak in flight "
            f"{r['peak_in_flight']}, exit after SIGTERM {r['stop_s']:.1f} s, "
            f"log {r['log'].relative_to(ROOT)}")


def check(r: dict) -> list[str]:
    where = f"{r['backend']} c={r['concurrency']}"
    notes = []
    if not r["finished"]:
        notes.append(f"{where}: timed out with {r['delivered']}/{r['documents']} "
                     f"delivered (see {r['log'].relative_to(ROOT)})")
    if set(r["outcomes"]) - {"delivered"}:
        notes.append(f"{where}: delivery-log outcomes {r['outcomes']}")
    if set(r["hl_statuses"]) - {200}:
        notes.append(f"{where}: fake HighLevel answered {r['hl_statuses']}")
    if r["repeated"]:
        notes.append(f"{where}: {r['repeated']} documents were PATCHed more than once")
    if r["violations"]:
        notes.append(f"{where}: contract violations {r['violations']}")
    return notes


def main(argv=None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(UTC)
    notes: list[str] = []
    backends, facts = usable_backends(args.backends, args.pg_url, notes)
    keys = bench_secrets()

    def case(backend: str, concurrency: int, _round: int) -> dict:
        print(f"[{backend}] FORWARD_CONCURRENCY={concurrency}: {args.documents} documents, "
              f"HighLevel latency {args.latency:g} s ...", flush=True)
        return run_one(args, backend, concurrency, keys)

    rows = run_matrix(backends, case, inner=args.concurrency, notes=notes,
                      describe=describe, check=check, keep_going=False)
    write_report(report(args, rows, notes, facts, started), args.output)
    ok = rows and all(r["finished"] and not r["repeated"] for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
