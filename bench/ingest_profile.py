"""Where a single-event ``POST /v1/events`` spends its CPU: the front door against Flask.

In one process, no server and no threads (so every request is its own group commit): the
app (``service:create_app()``, on a fresh SQLite file or, with ``--pg-url``, a fresh
PostgreSQL schema) is called as WSGI with prepared requests, each a new event:

- ``front door``: one bare event, the common case, answered by ``web/events_front.py``;
- ``Flask``: the same event as a batch of one (``{"events": [...]}``), which the front
  door hands to Flask: routing, flask-smorest's webargs parsing and response dumping,
  the hooks; the path every single event took before the front door.

``--rounds`` interleaved rounds of ``--requests`` each measure CPU (process time) per
request without a profiler; then one profiled round of each gives the top functions by
cumulative time. Results: stdout and ``--output``.

    .venv/bin/python bench/ingest_profile.py                 # ~1 min
    .venv/bin/python bench/ingest_profile.py --backends sqlite --requests 300 --rounds 1 \\
        --output bench/out/ingest-profile.md                  # a quick check of the script
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import io
import json
import logging
import os
import pstats
import statistics
import sys
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import (  # noqa: E402 - after the path set-up
    ROOT,
    bench_secrets,
    fresh_store,
    machine_section,
    markdown_table,
    report_head,
    service_env,
    store_options,
    usable_backends,
    write_report,
)
from werkzeug.test import EnvironBuilder  # noqa: E402

MODES = ("front door", "Flask")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", default="sqlite,postgresql",
                   type=lambda s: [x for x in s.split(",") if x])
    p.add_argument("--requests", type=int, default=1500, help="requests per round and mode")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--top", type=int, default=25, help="profile lines per mode")
    store_options(p, "results-ingest-profile.md", "the report")
    return p.parse_args(argv)


def build_app(url: str, keys: dict):
    from service import create_app
    from service.store.engine import create_engine, upgrade

    engine = create_engine(url)
    upgrade(engine)
    engine.dispose()
    env = service_env(url, keys, LOG_LEVEL="WARNING")  # as the servers run: production
    os.environ.clear()
    os.environ.update(env)
    return create_app()


def environs(key: str, mode: str, n: int) -> list[dict]:
    out = []
    for i in range(n):
        nonce = uuid.uuid4().hex
        event = {"locationId": f"loc-{i % 20:03d}", "invoiceId": f"inv-{nonce}",
                 "eventId": f"ev-{nonce}", "source": "bench"}
        body = event if mode == "front door" else {"events": [event]}
        out.append(EnvironBuilder(
            path="/v1/events", method="POST", data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        ).get_environ())
    return out


def run(app, envs: list[dict], profile: cProfile.Profile | None = None) -> float:
    """CPU ms per request over ``envs``."""
    def start_response(status, headers, exc_info=None):
        if not status.startswith("202"):
            raise RuntimeError(f"answered {status}")

    wsgi = app.wsgi_app
    cpu = time.process_time()
    if profile is not None:
        profile.enable()
    for environ in envs:
        b"".join(wsgi(environ, start_response))
    if profile is not None:
        profile.disable()
    return (time.process_time() - cpu) * 1000 / len(envs)


def top(profile: cProfile.Profile, n: int) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out).sort_stats("cumulative")
    stats.print_stats(n)
    text = out.getvalue().replace(str(ROOT) + "/", "").replace(
        str(Path(sys.prefix)) + "/", "")
    return text[text.index("ncalls"):].rstrip()


def main(argv=None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    notes: list[str] = []
    backends, facts = usable_backends(args.backends, args.pg_url, notes)
    keys = bench_secrets()
    key = keys["INGEST_API_KEYS"]
    logging.disable(logging.WARNING)
    rows, profiles = [], []
    with ExitStack() as stack:
        for backend in backends:
            store = stack.enter_context(fresh_store(backend, "ingest-profile",
                                                    pg_url=args.pg_url, keep=args.keep))
            app = build_app(store.url, keys)
            run(app, environs(key, "Flask", 200))  # warm: connections, caches, imports
            run(app, environs(key, "front door", 200))
            cpu: dict[str, list[float]] = {m: [] for m in MODES}
            for rnd in range(args.rounds):
                for mode in (MODES if rnd % 2 == 0 else MODES[::-1]):
                    cpu[mode].append(run(app, environs(key, mode, args.requests)))
            med = {m: statistics.median(v) for m, v in cpu.items()}
            for mode in MODES:
                rows.append([backend, mode, ", ".join(f"{x:.3f}" for x in cpu[mode]),
                             f"{med[mode]:.3f}", f"{med[mode] / med['Flask']:.2f}"])
                profile = cProfile.Profile()
                run(app, environs(key, mode, args.requests), profile)
                profiles.append((backend, mode, top(profile, args.top)))
            app.extensions["service"].engine.dispose()
            print(markdown_table(["store", "path", "CPU ms/request, each round", "median",
                                  "vs Flask"], rows[-2:]), flush=True)
    lines = [
        *report_head("Single-event ingest: where the CPU goes", started=started,
                     short=args.requests < 1500),
        markdown_table(["store", "path", "CPU ms/request, each round", "median",
                        "vs Flask"], rows),
        "",
        f"- One process calling the app as WSGI, {args.requests} requests per round and "
        f"path, {args.rounds} interleaved rounds, CPU = process time (includes the store "
        "driver's work in this process; not PostgreSQL's backend). No threads: each request "
        "is its own group commit, so the store's share is larger than under load, where "
        "one commit serves many requests.",
        "- front door: a bare event (`web/events_front.py`). Flask: the same event as a "
        "batch of one, which the front door hands to Flask: what every single event cost "
        "before it.",
        "",
        "## Profiles (cumulative time, one profiled round each)",
        "",
    ]
    for backend, mode, text in profiles:
        lines += [f"### {backend}, {mode}", "", "```", text, "```", ""]
    lines += machine_section(facts, notes)
    write_report("\n".join(lines) + "\n", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
