"""Console pages: server time per page, p50 and p99, with 10,000 locations and 1,000,000 events.

For each store (a fresh SQLite file, a fresh PostgreSQL database): ``flask db upgrade``'s
migrations, then ``bench/console_data.py``'s ``fill`` (10,000 locations, about 1,000,000
events, the mix of states a large install has), then the app exactly as gunicorn builds it
(``create_app()`` in production mode) signed in through the console's own form, after the
overview's rollup is folded once, as a running forwarder keeps it (every minute). Each page
is requested ``--requests`` times after ``--warmup`` requests, in turn with the others (so
no page always runs on a warm cache), and timed *inside the server*: a WSGI wrapper around
the app measures from the call until the last byte of the body is produced, which is what
gunicorn's worker spends on the request, without the network or a load generator.

Pages: the overview; the locations list (first page; each state; a search; a page 100
pages deep, reached by following the cursors); a location's page (the busiest location,
one waiting for a token, one with dead letters); the delivery log (first page, one
location); an event lookup. The goal (issue #15) is p99 under 200 ms for every page.

    .venv/bin/python bench/console_pages.py                   # ~5 min: both stores
    .venv/bin/python bench/console_pages.py --backends sqlite --locations 1000 --events 100000

Results: stdout and ``bench/results-console-pages.md``. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import shlex
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402 - after the path set-up, so `python bench/...` works
    bench_secrets,
    facts_block,
    fresh_store,
    markdown_table,
    store_options,
    usable_backends,
    write_report,
)

GOAL_P99_MS = 200.0
DEEP_PAGE = 100  # pages of 50 followed by cursor for the "deep page" case
MARKER = "<!-- analysis -->"


class ServerTimer:
    """WSGI middleware: the seconds each request spent in the app, body included."""

    def __init__(self, app):
        self.app, self.last = app, 0.0

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        body = b"".join(self.app(environ, start_response))
        self.last = time.perf_counter() - started
        return [body]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def signed_in_client(app, admin_key: str):
    client = app.test_client()
    form = client.get("/console/signin").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', form)[1]
    resp = client.post("/console/signin", data={"csrf_token": token, "key": admin_key})
    assert resp.status_code == 302, resp.status_code
    return client


def deep_cursor(client, pages: int) -> str | None:
    """The URL of page ``pages`` of the locations list, by following "Next page"."""
    url = "/console/locations"
    for _ in range(pages - 1):
        found = re.search(r'<a href="([^"]+)" rel="next">', client.get(url).text)
        if not found:
            return url
        url = found[1].replace("&amp;", "&")
    return url


def pages(filled, client, event_id: str) -> list[tuple[str, str]]:
    """(name, path) of every page measured."""
    states = filled.states
    cases = [("overview", "/console/overview"), ("locations", "/console/locations")]
    for state in ("no_token", "invalid", "inactive", "paused", "dead", "ok"):
        cases.append((f"locations ?state={state}", f"/console/locations?state={state}"))
    some = (states.get("ok") or [filled.busiest])[len(states.get("ok") or [1]) // 2]
    cases += [
        ("locations ?q=<id>", f"/console/locations?q={some}"),
        (f"locations, page {DEEP_PAGE}", deep_cursor(client, DEEP_PAGE)),
        ("location (busiest)", f"/console/locations/{filled.busiest}"),
        ("location (no token)", f"/console/locations/{states['no_token'][0]}"),
        ("location (dead letters)", f"/console/locations/{states['dead'][0]}"),
        ("replay dry run", f"/console/locations/{states['dead'][0]}/replay"),
        ("delivery log", "/console/deliveries"),
        ("delivery log ?locationId=busiest", f"/console/deliveries?locationId={filled.busiest}"),
        ("event lookup", f"/console/events?id={event_id}"),
    ]
    return cases


def run(backend: str, args, notes: list[str]) -> list[dict]:
    from console_data import fill  # bench/ is on the path (above)

    from service import create_app
    from service.store.engine import upgrade

    keys = bench_secrets()
    with fresh_store(backend, "console", pg_url=args.pg_url, keep=args.keep) as store:
        app = create_app({**_settings(store.url, keys)})
        svc = app.extensions["service"]
        upgrade(svc.engine)
        started = time.monotonic()
        now = dt.datetime.now(dt.UTC)
        filled = fill(svc.engine, locations=args.locations, events=args.events, now=now,
                      token_key=keys["TOKEN_ENCRYPTION_KEYS"])
        fill_s = time.monotonic() - started
        print(f"{backend}: filled {filled.counts} in {fill_s:.0f} s", flush=True)
        # The overview's hourly rollup, folded as a running forwarder folds it (once a
        # minute): the steady state a console reads, with only the last minutes live.
        started = time.monotonic()
        svc.store.fold_stats(now=now)
        notes.append(f"{backend}: fill {fill_s:.0f} s, first fold of the overview's rollup "
                     f"{time.monotonic() - started:.1f} s ({filled.counts.get('events', 0):,} "
                     "events)")
        timer = ServerTimer(app.wsgi_app)
        app.wsgi_app = timer
        client = signed_in_client(app, keys["ADMIN_API_KEYS"])
        event_id = store.scalar("SELECT id FROM events ORDER BY id DESC LIMIT 1")
        cases = pages(filled, client, event_id)
        times: dict[str, list[float]] = {name: [] for name, _ in cases}
        for i in range(args.warmup + args.requests):
            for name, path in (cases if i % 2 else list(reversed(cases))):
                resp = client.get(path)
                if resp.status_code != 200:
                    raise AssertionError(f"{name}: {path} answered {resp.status_code}")
                if i >= args.warmup:
                    times[name].append(timer.last * 1000)
        svc.engine.dispose()
    rows = []
    for name, _ in cases:
        ms = times[name]
        rows.append({"backend": backend, "page": name, "p50": statistics.median(ms),
                     "p99": percentile(ms, 99), "max": max(ms), "n": len(ms)})
        if rows[-1]["p99"] >= GOAL_P99_MS:
            notes.append(f"{backend} {name}: p99 {rows[-1]['p99']:.0f} ms is over the goal")
    return rows


def _settings(db_url: str, keys: dict[str, str]) -> dict:
    """The app's settings as production parses them (typed: what create_app takes)."""
    return {
        "RELAY_ENV": "production", "DATABASE_URL": db_url, "LOG_LEVEL": "WARNING",
        "PUBLIC_BASE_URL": "http://127.0.0.1:8000", "HIGHLEVEL_BASE_URL": "http://127.0.0.1:9",
        **{name: value.split(",") for name, value in keys.items()},
    }


def report(rows: list[dict], args, facts, notes: list[str]) -> str:
    table = markdown_table(
        ["store", "page", "p50 ms", "p99 ms", "max ms", "requests", "goal p99 < 200 ms"],
        [[r["backend"], r["page"], f"{r['p50']:.1f}", f"{r['p99']:.1f}", f"{r['max']:.1f}",
          r["n"], "yes" if r["p99"] < GOAL_P99_MS else "**no**"] for r in rows])
    command = "python bench/console_pages.py " + shlex.join(sys.argv[1:])
    return "\n".join([
        "# Console pages: server time per page", "",
        f"{args.locations:,} locations and about {args.events:,} events "
        f"(`bench/console_data.py`'s `fill`); each page requested {args.requests} times after "
        f"{args.warmup} warm-up requests, timed inside the WSGI app (body included). "
        "Goal: p99 under 200 ms.", "",
        table, "",
        *(["Notes:", "", *(f"- {n}" for n in notes), ""] if notes else []),
        f"Command: `{command.strip()}`", "",
        "Machine:", "", facts_block(facts), "",
    ])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    store_options(p, "results-console-pages.md")
    p.add_argument("--backends", default="sqlite,postgresql")
    p.add_argument("--locations", type=int, default=10_000)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--requests", type=int, default=100)
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args()
    notes: list[str] = []
    backends, facts = usable_backends(args.backends.split(","), args.pg_url, notes)
    rows = [row for backend in backends for row in run(backend, args, notes)]
    write_report(report(rows, args, facts, notes), args.output, marker=MARKER)


if __name__ == "__main__":
    main()
