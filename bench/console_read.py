"""Read benchmark: the locations directory and a location's page on a large install.

For each store (a new SQLite file under bench/out/, and a new PostgreSQL database), the
schema from the service's migrations, then ``console_data.fill`` (``--locations`` 10,000,
``--events`` 1,000,000: tokens in every state, rate-limit pauses, dead letters, the
delivery log, the forwarder's counts), then ``create_app`` on it in this process (the
shipped settings, RELAY_ENV=production) and, through Flask's test client, ``--requests``
(200, after ``--warmup`` 10) requests of each case:

- ``GET /v1/locations``: the first page; a page deep into the list (a cursor at 90%);
  each ``state`` filter, first page and deep; a search that matches a few locations and
  one that matches none (reads every id); a page of 200 (the most a page holds);
- ``GET /v1/locations/<id>``: a different location each request, and the busiest one
  (the most documents, views and attempts).

Each request is timed from the test client's call to its response (server time: the app,
the store, JSON; no network, no gunicorn), p50 / p99 / max in ms. The goal (issue #15):
p99 under 200 ms; the report names the cases over it. The script stops with an error if
an answer is not 200, or a page without a state filter holds other rows than the fill
made. Results: stdout and ``bench/results-console.md``.

    .venv/bin/python bench/console_read.py
    .venv/bin/python bench/console_read.py --backends sqlite --events 100000   # quicker

The console's HTML pages can be timed the same way on the same stores: see
``console_data.fill`` and ``timed`` here.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402 - after the path set-up, so `python bench/console_read.py` works
    bench_secrets,
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
from console_data import fill  # noqa: E402

GOAL_MS = 200
READING = "## Reading"  # the hand-written analysis in the results file, kept on a rerun


def timed(client, path: str, *, headers: dict, requests: int, warmup: int,
          check=None) -> dict:
    """GET ``path`` (a str, or a function of the request's number giving one) ``warmup``
    + ``requests`` times through a Flask test client; return p50/p99/max in ms of the
    measured ones. Every answer must be 200, and pass ``check(json)`` when given."""
    times = []
    for n in range(warmup + requests):
        url = path(n) if callable(path) else path
        start = time.perf_counter()
        resp = client.get(url, headers=headers)
        elapsed = (time.perf_counter() - start) * 1000
        if resp.status_code != 200:
            raise RuntimeError(f"GET {url}: {resp.status_code} {resp.get_data(as_text=True)}")
        if check is not None:
            check(resp.get_json())
        if n >= warmup:
            times.append(elapsed)
    times.sort()
    return {"p50": percentile(times, 50), "p99": percentile(times, 99), "max": times[-1],
            "n": len(times)}


def rows_are(expected: int):
    def check(body):
        if len(body["locations"]) != expected:
            raise RuntimeError(f"{len(body['locations'])} rows, expected {expected}")
    return check


def cases(filled, ids: list[str], limit: int = 50) -> list[tuple[str, object, object]]:
    """(label, path, check) for every case, from what ``fill`` made."""
    deep = ids[int(len(ids) * 0.9)]
    out = [("first page", "/v1/locations", rows_are(min(limit, len(ids)))),
           ("deep page (cursor at 90%)", f"/v1/locations?cursor={deep}",
            rows_are(min(limit, sum(1 for i in ids if i > deep)))),
           ("page of 200 (the most)", "/v1/locations?limit=200",
            rows_are(min(200, len(ids))))]
    for state, members in sorted(filled.states.items()):
        members = sorted(members)
        out.append((f"state={state}", f"/v1/locations?state={state}", None))
        middle = members[len(members) // 2] if members else ""
        if middle:
            out.append((f"state={state}, deep", f"/v1/locations?state={state}&cursor={middle}",
                        None))
    some = "123"
    out.append((f"search q={some}", f"/v1/locations?q={some}",
                rows_are(min(limit, sum(1 for i in ids if some in i)))))
    out.append(("search, no match", "/v1/locations?q=zzz", rows_are(0)))
    rnd = random.Random(15)
    picks = [rnd.choice(ids) for _ in range(5000)]
    out.append(("GET /v1/locations/<id>, any", lambda n: f"/v1/locations/{picks[n]}", None))
    out.append((f"GET /v1/locations/{filled.busiest} (busiest)",
                f"/v1/locations/{filled.busiest}", None))
    return out


def run_backend(backend: str, args, notes: list[str]) -> list[list[object]]:
    from service import create_app
    from service.store.engine import create_engine, upgrade

    keys = bench_secrets()
    with fresh_store(backend, "console", pg_url=args.pg_url, keep=args.keep) as store:
        engine = create_engine(store.url)
        try:
            upgrade(engine)
            print(f"{backend}: filling {args.locations:,} locations, {args.events:,} events",
                  flush=True)
            started = time.monotonic()
            filled = fill(engine, locations=args.locations, events=args.events,
                          token_key=keys["TOKEN_ENCRYPTION_KEYS"])
            fill_s = time.monotonic() - started
        finally:
            engine.dispose()
        notes.append(f"{backend}: filled in {fill_s:.0f} s: "
                     + ", ".join(f"{n:,} {t}" for t, n in filled.counts.items()))
        app = create_app({
            "RELAY_ENV": "production", "DATABASE_URL": store.url, "LOG_LEVEL": "WARNING",
            "INGEST_API_KEYS": [keys["INGEST_API_KEYS"]],
            "ADMIN_API_KEYS": [keys["ADMIN_API_KEYS"]],
            "PIXEL_SIGNING_KEYS": [keys["PIXEL_SIGNING_KEYS"]],
            "TOKEN_ENCRYPTION_KEYS": [keys["TOKEN_ENCRYPTION_KEYS"]],
            "PUBLIC_BASE_URL": "http://127.0.0.1:8000",
            "HIGHLEVEL_BASE_URL": "http://127.0.0.1:9",
        })
        try:
            client = app.test_client()
            headers = {"Authorization": f"Bearer {keys['ADMIN_API_KEYS']}"}
            ids = sorted({i for members in filled.states.values() for i in members})
            rows = []
            for label, path, check in cases(filled, ids):
                r = timed(client, path, headers=headers, requests=args.requests,
                          warmup=args.warmup, check=check)
                mark = "" if r["p99"] < GOAL_MS else " (over the goal)"
                print(f"  {backend:10s} {label:45s} p50 {r['p50']:7.1f}  p99 {r['p99']:7.1f}"
                      f"  max {r['max']:7.1f} ms{mark}", flush=True)
                rows.append([backend, label, f"{r['p50']:.1f}", f"{r['p99']:.1f}",
                             f"{r['max']:.1f}", r["n"]])
        finally:
            app.extensions["service"].engine.dispose()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", default="sqlite,postgresql")
    p.add_argument("--locations", type=int, default=10_000)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--requests", type=int, default=200, help="measured requests per case")
    p.add_argument("--warmup", type=int, default=10)
    store_options(p, "results-console.md")
    args = p.parse_args()
    backends = args.backends.split(",")
    check_names(p, backends, ("sqlite", "postgresql"), "backend")
    notes: list[str] = []
    backends, facts = usable_backends(backends, args.pg_url, notes)
    started = dt.datetime.now(dt.UTC)
    rows = []
    for backend in backends:
        rows += run_backend(backend, args, notes)
    over = [r for r in rows if float(r[3]) >= GOAL_MS]
    short = args.locations < 10_000 or args.events < 1_000_000
    lines = report_head("Console read benchmark (`GET /v1/locations`, a location's page)",
                        started=started, short=short)
    lines += [
        markdown_table(["store", "case", "p50 ms", "p99 ms", "max ms", "requests"], rows), "",
        f"- Goal (issue #15): p99 under {GOAL_MS} ms per page. "
        + (f"Over it: {len(over)} case(s)." if over else "Every case is under it."),
        "- Server time: each request through Flask's test client in the benchmark's own "
        "process (the app, the store, JSON; no network, no gunicorn), after "
        f"{args.warmup} warm-up requests; pages of 50 unless said.",
        f"- Data: {args.locations:,} locations, {args.events:,} events, made by "
        "`bench/console_data.py` (`fill`): see its docstring for the mix.",
        "", *machine_section(facts, notes),
    ]
    write_report("\n".join(lines) + "\n", args.output, marker=READING)


if __name__ == "__main__":
    main()
