"""Ingest benchmark: how many "invoice viewed" events per second the real service accepts.

For each store (a fresh SQLite file, a fresh PostgreSQL database) it runs
``flask --app service db upgrade``, starts the web process exactly as the Procfile does
(``gunicorn --config config/gunicorn.conf.py "service:create_app()"``, WEB_CONCURRENCY
workers, on a free 127.0.0.1 port, RELAY_ENV=production), and drives ``POST /v1/events``
from load-generator processes (stdlib ``http.client``, one keep-alive connection per
thread) for a fixed time per case:

- ``single``: one event per request, distinct invoice ids plus some repeats (coalesced);
- ``batch``: ``{"events": [...]}`` of ``--batch-size`` (500) events per request.

It reports events/s, requests/s, p50/p99 latency and errors over the measured window
(after a warm-up), and checks that the events table grew by exactly the number of
events the server answered 202 for. Results: stdout and ``bench/results-ingest.md``.

    .venv/bin/python bench/ingest.py                  # defaults: 10 s per case, both stores
    .venv/bin/python bench/ingest.py --duration 3 --backends sqlite
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import multiprocessing as mp
import os
import random
import sys
import threading
import time
from collections import Counter, deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402 - after the path set-up, so `python bench/ingest.py` works
    ROOT,
    Process,
    bench_secrets,
    check_names,
    command_line,
    fresh_store,
    log_text,
    machine_section,
    markdown_table,
    percentile,
    process_tree_cpu,
    run_matrix,
    store_options,
    usable_backends,
    web_server,
    write_report,
)


def _ints(value: str) -> list[int]:
    return [int(v) for v in value.split(",") if v.strip()]


def parse_args(argv=None) -> argparse.Namespace:
    cpus = os.cpu_count() or 1
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per case")
    p.add_argument("--warmup", type=float, default=2.0,
                   help="seconds of load before measuring (counted in the stored check)")
    p.add_argument("--backends", default="sqlite,postgresql",
                   help="comma list of sqlite, postgresql")
    p.add_argument("--cases", default="single,batch", help="comma list of single, batch")
    p.add_argument("--connections", type=_ints, default=[16],
                   help="concurrent connections for single-event POSTs (comma list: 4,16,64)")
    p.add_argument("--batch-connections", type=_ints, default=[4],
                   help="concurrent connections for batch POSTs (comma list)")
    p.add_argument("--batch-size", type=int, default=500, help="events per batch request")
    p.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", 4)),
                   help="gunicorn workers (WEB_CONCURRENCY)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("GUNICORN_THREADS", 4)),
                   help="threads per gunicorn worker (GUNICORN_THREADS)")
    p.add_argument("--client-procs", type=int, default=max(2, min(4, cpus // 2)),
                   help="load-generator processes (connections are spread over them)")
    p.add_argument("--locations", type=int, default=50, help="distinct locationIds")
    p.add_argument("--repeat", type=float, default=0.2,
                   help="share of events that repeat a recent invoice (coalesced)")
    store_options(p, "results-ingest.md")
    args = p.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    check_names(p, args.backends, ("sqlite", "postgresql"), "backend")
    check_names(p, args.cases, ("single", "batch"), "case")
    if not 1 <= args.batch_size <= 500:
        p.error("--batch-size must be 1..500 (the API's limit)")
    return args


# -- load generator (runs in child processes) ---------------------------------------------

def _client_thread(spec: dict, tid: int, out: list) -> None:
    rng = random.Random(spec["seed"] * 1000 + tid)
    headers = {"Authorization": f"Bearer {spec['key']}", "Content-Type": "application/json"}
    recent: deque = deque(maxlen=64)
    serial = 0

    def event() -> dict:
        nonlocal serial
        if recent and rng.random() < spec["repeat"]:
            loc, doc = rng.choice(recent)
        else:
            serial += 1
            loc, doc = rng.randrange(spec["locations"]), f"inv-{spec['seed']}-{tid}-{serial}"
            recent.append((loc, doc))
        return {"locationId": f"loc-{loc:03d}", "invoiceId": doc, "source": "bench"}

    batch = spec["mode"] == "batch"
    stats = {"latencies": [], "requests": 0, "events": 0, "accepted_total": 0,
             "errors": Counter(), "statuses": Counter(), "unknown_outcome": 0}
    conn: http.client.HTTPConnection | None = None
    start_at, measure_from, measure_to = spec["start_at"], spec["measure_from"], spec["measure_to"]
    time.sleep(max(0.0, start_at - time.time()))
    while time.time() < measure_to:
        payload = {"events": [event() for _ in range(spec["batch_size"])]} if batch else event()
        body = json.dumps(payload).encode()
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", spec["port"], timeout=60)
        sent = False
        began = time.time()
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/v1/events", body, headers)
            sent = True
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            stats["errors"][type(exc).__name__] += 1
            stats["unknown_outcome"] += sent  # the server may have stored it
            conn.close()
            conn = None
            continue
        elapsed_ms = (time.perf_counter() - t0) * 1000
        done = time.time()
        if resp.status != 202:
            stats["errors"][f"HTTP {resp.status}"] += 1
            continue
        answer = json.loads(data)
        results = answer["events"] if batch else [answer]
        stats["accepted_total"] += len(results)
        stats["statuses"].update(r["status"] for r in results)
        # Throughput: each answer counts pro rata for the part of its round trip inside the
        # window, so a few slow 500-event batches do not quantise the rate.
        overlap = min(done, measure_to) - max(began, measure_from)
        if overlap > 0:
            share = min(1.0, overlap / max(done - began, 1e-9))
            stats["requests"] += share
            stats["events"] += share * len(results)
        if measure_from <= began < measure_to:  # latency: requests sent inside the window
            stats["latencies"].append(elapsed_ms)
    if conn is not None:
        conn.close()
    out.append(stats)


def client_process(spec: dict, pipe) -> None:
    """One load-generator process: ``spec['threads']`` keep-alive connections."""
    pipe.send("ready")
    spec.update(pipe.recv())  # the shared start and window times
    results: list = []
    threads = [threading.Thread(target=_client_thread, args=(spec, i, results), daemon=True)
               for i in range(spec["threads"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(spec["measure_to"] - time.time() + 90)
    cpu = os.times()
    merged = {"latencies": [], "requests": 0, "events": 0, "accepted_total": 0,
              "errors": Counter(), "statuses": Counter(), "unknown_outcome": 0,
              "cpu": cpu.user + cpu.system, "stuck_threads": sum(t.is_alive() for t in threads)}
    for r in results:
        for k in ("requests", "events", "accepted_total", "unknown_outcome"):
            merged[k] += r[k]
        merged["latencies"].extend(r["latencies"])
        merged["errors"].update(r["errors"])
        merged["statuses"].update(r["statuses"])
    pipe.send(merged)
    pipe.close()


# -- one case -----------------------------------------------------------------------------

def run_case(args, store, server: Process, port: int, key: str, mode: str, conns: int,
             seed: int) -> dict:
    ctx = mp.get_context("spawn")
    procs_n = max(1, min(conns, args.client_procs))
    per = [conns // procs_n + (1 if i < conns % procs_n else 0) for i in range(procs_n)]
    batch_size = args.batch_size if mode == "batch" else 1
    children = []
    for i, threads in enumerate(per):
        parent_end, child_end = ctx.Pipe()
        spec = {"port": port, "key": key, "mode": mode, "threads": threads,
                "batch_size": batch_size, "locations": args.locations, "repeat": args.repeat,
                "seed": seed * 100 + i}
        proc = ctx.Process(target=client_process, args=(spec, child_end), daemon=True)
        proc.start()
        children.append((proc, parent_end))
    for _proc, pipe in children:
        if not pipe.poll(60):
            raise RuntimeError("load generator did not start within 60 s")
        pipe.recv()

    before = store.scalar("SELECT coalesce(sum(views), 0) FROM events")
    start_at = time.time() + 0.3
    window = {"start_at": start_at, "measure_from": start_at + args.warmup,
              "measure_to": start_at + args.warmup + args.duration}
    cpu_before = process_tree_cpu(server.pid)
    for _, pipe in children:
        pipe.send(window)
    results = []
    for proc, pipe in children:
        timeout = max(1.0, window["measure_to"] - time.time()) + 120
        if not pipe.poll(timeout):
            raise RuntimeError("load generator did not finish in time")
        results.append(pipe.recv())
        proc.join(10)
    wall = time.time() - start_at
    server_cpu = process_tree_cpu(server.pid) - cpu_before
    after = store.scalar("SELECT coalesce(sum(views), 0) FROM events")

    lat = sorted(x for r in results for x in r["latencies"])
    errors: Counter = Counter()
    statuses: Counter = Counter()
    for r in results:
        errors.update(r["errors"])
        statuses.update(r["statuses"])
    accepted_total = sum(r["accepted_total"] for r in results)
    # Every accepted event here is new (no eventId), so each is one new events row.
    expected_rows = accepted_total - statuses.get("duplicate", 0)
    stored = after - before
    unknown = sum(r["unknown_outcome"] for r in results)
    requests = sum(r["requests"] for r in results)
    events = sum(r["events"] for r in results)
    return {
        "mode": mode, "conns": conns, "client_procs": procs_n, "batch_size": batch_size,
        "requests": requests, "events": events, "samples": len(lat),
        "rps": requests / args.duration, "eps": events / args.duration,
        "p50": percentile(lat, 50), "p99": percentile(lat, 99),
        "max": lat[-1] if lat else 0.0,
        "errors": sum(errors.values()), "error_kinds": dict(errors),
        "statuses": dict(statuses), "accepted_total": accepted_total, "stored": stored,
        "expected_rows": expected_rows, "unknown_outcome": unknown,
        "stored_ok": stored == expected_rows if not unknown
        else expected_rows <= stored <= expected_rows + unknown * batch_size,
        "server_cpu": server_cpu / wall, "client_cpu": sum(r["cpu"] for r in results) / wall,
        "stuck": sum(r["stuck_threads"] for r in results),
    }


def run_backend(args, backend: str, _server, _round: int, keys: dict, notes: list):
    """One gunicorn on a fresh ``backend`` store, each case in turn: a row each."""
    with fresh_store(backend, "ingest", pg_url=args.pg_url, keep=args.keep) as store:
        with web_server(f"ingest-{backend}-gunicorn", store, keys, workers=args.workers,
                        threads=args.threads) as server:
            log = server.web.stdout_path
            print(f"[{backend}] gunicorn up on 127.0.0.1:{server.port} "
                  f"({args.workers} workers x {args.threads} threads), log {log}", flush=True)
            plan = [("single", c) for c in args.connections if "single" in args.cases]
            plan += [("batch", c) for c in args.batch_connections if "batch" in args.cases]
            for i, (mode, conns) in enumerate(plan):
                print(f"[{backend}] {mode}, {conns} connections: {args.warmup:g} s warm-up + "
                      f"{args.duration:g} s ...", flush=True)
                r = run_case(args, store, server.web, server.port, keys["INGEST_API_KEYS"],
                             mode, conns, seed=i + 1)
                r["backend"] = backend
                yield r
                if not server.web.running():
                    raise RuntimeError(f"gunicorn died:\n{server.web.tail()}")
        print(f"[{backend}] gunicorn stopped in {server.stopped_in:.1f} s", flush=True)
        text = log_text(server.web)
        tracebacks, worker_timeouts = text.count("Traceback"), text.count("WORKER TIMEOUT")
        if tracebacks or worker_timeouts:
            notes.append(f"{backend}: server log has {tracebacks} tracebacks, "
                         f"{worker_timeouts} worker timeouts (see {log.relative_to(ROOT)})")


def describe(r: dict) -> str:
    return (f"[{r['backend']}] {r['mode']}: {r['eps']:.0f} events/s, {r['rps']:.0f} req/s, "
            f"p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, errors {r['errors']}, "
            f"stored {r['stored']} / expected {r['expected_rows']} "
            f"{'OK' if r['stored_ok'] else 'MISMATCH'}")


def check(r: dict) -> list[str]:
    where = f"{r['backend']} {r['mode']} x{r['conns']}"
    notes = []
    if r["error_kinds"]:
        notes.append(f"{where}: errors {r['error_kinds']}"
                     + (f" ({r['unknown_outcome']} with unknown outcome)"
                        if r["unknown_outcome"] else ""))
    if r["samples"] < 20:
        notes.append(f"{where}: only {r['samples']} requests "
                     "sent in the window: a rough rate and p99; raise --duration")
    if r["stuck"]:
        notes.append(f"{where}: {r['stuck']} client threads still waiting at the end")
    if not r["stored_ok"]:
        notes.append(f"{where}: STORED {r['stored']} rows but "
                     f"the server accepted {r['expected_rows']} new events")
    return notes


def _ms(r: dict) -> list[str]:
    if not r["samples"]:
        return ["-", "-", "-"]  # no request was sent inside the window
    return [f"{r['p50']:.1f}", f"{r['p99']:.1f}", f"{r['max']:.0f}"]


def report(args, rows: list, notes: list, facts: list, started: dt.datetime) -> str:
    headers = ["store", "case", "conns", "events/req", "requests", "events/s", "req/s",
               "p50 ms", "p99 ms", "max ms", "errors", "server CPU (cores)",
               "client CPU (cores)", "stored = 202'd"]
    table = [[r["backend"], r["mode"], r["conns"], r["batch_size"], f"{r['requests']:,.0f}",
              f"{r['eps']:,.0f}", f"{r['rps']:,.1f}", *_ms(r), r["errors"],
              f"{r['server_cpu']:.2f}",
              f"{r['client_cpu']:.2f}",
              f"{'yes' if r['stored_ok'] else 'NO'} ({r['stored']:,} / {r['expected_rows']:,})"]
             for r in rows]
    lines = [
        "# Ingest benchmark (`POST /v1/events`)",
        "",
        f"Run {started:%Y-%m-%d %H:%M} UTC with:",
        "",
        f"    {command_line()}",
        "",
        markdown_table(headers, table),
        "",
        "- events/s, req/s: 202 answers over the measured window "
        f"({args.duration:g} s, after {args.warmup:g} s of warm-up), each counted for the "
        "share of its round trip inside the window; requests: that count. p50/p99/max: "
        "202 answers to requests sent inside the window, client-side, request sent to "
        "response read, over a keep-alive connection.",
        "- errors: non-202 answers and connection errors over warm-up and window.",
        "- stored = 202'd: rows added to `events` during the case (warm-up included) versus "
        "events the server answered 202 for; a 202 promises a committed view.",
        "- CPU: user+system seconds per wall second (1.00 = one core busy); server = gunicorn "
        "master and workers, client = the load generator. Both share this machine.",
        "",
        "## Set-up",
        "",
        "- service: `gunicorn --config config/gunicorn.conf.py \"service:create_app()\"` with "
        f"WEB_CONCURRENCY={args.workers}, GUNICORN_THREADS={args.threads}, RELAY_ENV=production "
        "(JSON logs, access log on, to `bench/out/`), on 127.0.0.1; schema from "
        "`flask --app service db upgrade`.",
        "- stores: a new SQLite file under `bench/out/` (WAL, synchronous=FULL, as the service "
        "configures it) and a new PostgreSQL database on the server below, dropped afterwards.",
        f"- load: {args.client_procs} load-generator processes at most (stdlib `http.client`, "
        "one keep-alive connection per thread, closed loop: a connection sends its next "
        f"request when the previous one is answered); {args.locations} locations; "
        f"{args.repeat:.0%} of events repeat a recent invoice of the same connection (those "
        "coalesce onto one pending row); no `eventId`, so every 202 is a new event row.",
        "",
        *machine_section(facts, notes),
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    notes: list[str] = []
    backends, facts = usable_backends(args.backends, args.pg_url, notes)
    keys = bench_secrets()
    rows = run_matrix(backends, lambda b, s, rnd: run_backend(args, b, s, rnd, keys, notes),
                      notes=notes, describe=describe, check=check, keep_going=False)
    write_report(report(args, rows, notes, facts, started), args.output)
    return 0 if rows and all(r["stored_ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
