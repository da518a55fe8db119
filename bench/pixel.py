"""Pixel benchmark: requests/s of ``GET /v1/pixel/<token>.gif`` through gunicorn vs a bare app.

One run measures, side by side and in turn, for each gunicorn setting
(``WEB_CONCURRENCY`` x ``GUNICORN_THREADS``, ``--configs``):

- ``bare``: ``bench/bare_app.py``, a bare Flask app serving the same 43-byte GIF with
  the same headers and no store, started as
  ``gunicorn --config config/gunicorn.conf.py "bench.bare_app:create_app()"``;
- ``relay``: the service, ``gunicorn --config config/gunicorn.conf.py "service:create_app()"``
  after ``flask --app service db upgrade``, on a fresh SQLite file and on a fresh
  PostgreSQL database (dropped afterwards);

Every server gets the same gunicorn config file and the same settings, each on its own
free 127.0.0.1 port. The load generator is ``wrk`` (Debian's ``wrk`` package) in its own
process, with a Lua script that rotates through pixel URLs for ``--invoices`` distinct
invoices over ``--locations`` locations, signed with ``service.ingest.pixels.PixelSigner`` and
the ``PIXEL_SIGNING_KEYS`` given to the server, with a desktop Chrome User-Agent made one
of 1009 (so no (invoice, client) pair repeats within a run and no view folds into a stored
row, as opens by many recipients would not). Without
wrk (or with ``--loadgen python``) a multi-process stdlib ``http.client`` generator is
used instead; the report says which.

Durability check, per relay run: the ``events`` rows added during the measured load are
compared with the 200 answers the load generator counted. A 200 from the relay does not
by itself prove a view was stored (``record_pixel_view`` swallows store errors so the GIF
always goes out), so the row count is the proof. The server is stopped gracefully
(SIGTERM, in-flight requests finish) before counting. Rows may exceed the 200s by at most
one request per connection (sent before the load generator stopped, answered after it
stopped reading) plus any timed-out requests; rows below the 200s mean a 200 without a
committed view: a failure. The server log is also scanned for ``pixel.record_failed``.

    .venv/bin/python bench/pixel.py                             # 2x4,4x4,4x8; 15 s each
    .venv/bin/python bench/pixel.py --configs 4x4 --duration 5 --backends sqlite
    .venv/bin/python bench/pixel.py --configs 1x32,2x16,4x8 --rounds 2

Results: stdout and ``bench/results-pixel.md`` (the hand-written analysis after the marker
line in that file is kept when the numbers are rewritten). Traffic goes to 127.0.0.1 only;
every wait is bounded.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import multiprocessing as mp
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402 - after the path set-up, so `python bench/pixel.py` works
    OUT,
    SERVICE_APP,
    bench_secrets,
    check_names,
    command_line,
    flask,
    fresh_store,
    log_text,
    machine_section,
    markdown_table,
    percentile,
    run_checked,
    run_matrix,
    service_env,
    store_options,
    tree_cpu,
    usable_backends,
    web_server,
    write_report,
)

# A current desktop Chrome on Windows: what most invoice emails are opened in (via webmail).
USER_AGENT = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/126.0.0.0 Safari/537.36")
ACCEPT = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"
BARE_APP = "bench.bare_app:create_app()"
MARKER = "<!-- analysis: kept by bench/pixel.py when it rewrites the numbers above -->"

WRK_SCRIPT = r"""-- bench/pixel.py: rotate through pixel paths (one per line in args[1]).
local paths = {}
local counter = 1
local next_tid = 0

function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
end

function init(args)
  for line in io.lines(args[1]) do
    if #line > 0 then paths[#paths + 1] = line end
  end
  -- each wrk thread starts at its own offset, so threads do not hit the same row in step
  counter = ((tid or 0) * 397) % #paths + 1
  wrk.headers["User-Agent"] = args[2]
  wrk.headers["Accept"] = args[3]
  wrk.headers["Accept-Language"] = "en-US,en;q=0.9"
end

-- Each (invoice, client) pair is new, as the opens of invoice emails by their many
-- recipients are: a client's repeats within a window fold into the row it stored
-- (service/clients.py), a cheaper path that is not the one to measure. Clients differ by
-- user agent, one of 1009 (a prime: the pairs with the invoices repeat only after
-- 1009 x #paths requests, far more than a run sends); the relay's verdict cache holds them.
local sent = 0
local agents = {}

function request()
  local path = paths[counter]
  counter = counter % #paths + 1
  sent = sent + 1
  local agent = agents[sent % 1009 + 1]
  if agent == nil then
    agent = wrk.headers["User-Agent"] .. " c" .. (sent % 1009)
    agents[sent % 1009 + 1] = agent
  end
  return wrk.format("GET", path, {
    ["Host"] = wrk.headers["Host"], ["Accept"] = wrk.headers["Accept"],
    ["Accept-Language"] = wrk.headers["Accept-Language"], ["User-Agent"] = agent})
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'PIXELBENCH {"duration_us":%d,"requests":%d,"bytes":%d,"connect":%d,"read":%d,'
    .. '"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,'
    .. '"max_us":%d,"mean_us":%.1f}\n',
    summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
"""


def _configs(value: str) -> list[tuple[int, int]]:
    out = []
    for part in value.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", part)
        if not match:
            raise argparse.ArgumentTypeError(f"{part!r}: expected WORKERSxTHREADS, e.g. 4x8")
        out.append((int(match[1]), int(match[2])))
    return out


def _ints(value: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected numbers, e.g. 32,64") from None


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--configs", type=_configs, default=_configs("2x4,4x4,4x8"),
                   help="gunicorn WEB_CONCURRENCYxGUNICORN_THREADS settings to try")
    p.add_argument("--duration", type=int, default=15, help="measured seconds per case")
    p.add_argument("--warmup", type=int, default=2,
                   help="seconds of unmeasured load after start-up, before each case")
    p.add_argument("--connections", type=_ints, default=[32],
                   help="concurrent connections; several (e.g. 32,64,128) run each setting at "
                        "each, and the summary shows each server's peak")
    p.add_argument("--wrk-threads", type=int, default=2, help="wrk -t")
    p.add_argument("--timeout", type=int, default=10, help="seconds before wrk gives up on one")
    p.add_argument("--backends", type=_csv, default=["sqlite", "postgresql"],
                   help="stores for the relay: sqlite, postgresql")
    p.add_argument("--targets", type=_csv, default=["bare", "relay"],
                   help="bare (a bare Flask app serving the GIF), relay (the service)")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat the whole matrix, alternating the order; the summary takes "
                        "the median per cell (use 2-3 on a shared machine)")
    p.add_argument("--invoices", type=int, default=1000, help="distinct invoices")
    p.add_argument("--locations", type=int, default=20, help="distinct locations")
    p.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto",
                   help="wrk if installed (auto), or the stdlib multi-process fallback")
    p.add_argument("--client-procs", type=int, default=2,
                   help="processes of the python load generator")
    p.add_argument("--baseline", type=Path, default=None,
                   help="a checkout of an earlier commit (git worktree add DIR REV): its "
                        "relay runs as target 'baseline' beside this one, in the same run, "
                        "so a change is measured side by side (same store, same load)")
    store_options(p, "results-pixel.md")
    args = p.parse_args(argv)
    check_names(p, args.backends, ("sqlite", "postgresql"), "backend")
    if args.baseline is not None:
        args.baseline = args.baseline.resolve()
        if not (args.baseline / "service" / "__init__.py").is_file():
            p.error(f"--baseline {args.baseline}: no service/ package there")
        if "baseline" not in args.targets:
            args.targets.append("baseline")
    check_names(p, args.targets, ("bare", "relay", "baseline"), "target")
    if args.loadgen == "auto":
        args.loadgen = "wrk" if shutil.which("wrk") else "python"
    elif args.loadgen == "wrk" and not shutil.which("wrk"):
        p.error("wrk is not installed (apt-get install -y wrk), use --loadgen python")
    return args


# -- tokens ----------------------------------------------------------------------------------

def mint_paths(keys: dict, invoices: int, locations: int, seed: int = 7) -> list[str]:
    """Pixel paths for ``invoices`` invoices spread over ``locations``, signed as the server
    will verify them (the first of PIXEL_SIGNING_KEYS signs), expiring in 30 days."""
    from service.ingest.pixels import PixelSigner, PixelTarget

    signer = PixelSigner([k.strip() for k in keys["PIXEL_SIGNING_KEYS"].split(",")])
    rng = random.Random(seed)
    locs = [f"{rng.getrandbits(96):024x}" for _ in range(locations)]  # HighLevel-like ids
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).replace(microsecond=0)
    paths = []
    for i in range(invoices):
        target = PixelTarget("invoice", locs[i % locations], f"{rng.getrandbits(96):024x}",
                             expires)
        paths.append(f"/v1/pixel/{signer.sign(target)}.gif")
    rng.shuffle(paths)
    return paths


# -- load generators -------------------------------------------------------------------------

def run_wrk(args, port: int, paths_file: Path, script: Path, duration: int) -> dict:
    cmd = ["wrk", f"-t{args.wrk_threads}", f"-c{args.connections}", f"-d{duration}s",
           f"--timeout={args.timeout}s", "--latency", "-s", str(script),
           f"http://127.0.0.1:{port}", "--", str(paths_file), USER_AGENT, ACCEPT]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("PIXELBENCH ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    s = json.loads(line.split(" ", 1)[1])
    secs = s["duration_us"] / 1e6
    return {
        "seconds": secs, "responses": s["requests"], "ok": s["requests"] - s["status"],
        "non2xx": s["status"], "sock_errors": s["connect"] + s["read"] + s["write"],
        "timeouts": s["timeout"], "rps": (s["requests"] - s["status"]) / secs,
        "p50": s["p50_us"] / 1000, "p99": s["p99_us"] / 1000, "max": s["max_us"] / 1000,
        "client_cpu": (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        / secs,
        "raw": proc.stdout,
    }


def _py_client(spec: dict, out) -> None:
    """One load-generator process: ``spec['conns']`` threads, one keep-alive connection each."""
    headers = {"User-Agent": USER_AGENT, "Accept": ACCEPT, "Accept-Language": "en-US,en;q=0.9"}
    paths = spec["paths"]
    results = []

    def worker(tid: int) -> None:
        i = (spec["offset"] + tid * 397) % len(paths)
        stats = {"lat": [], "codes": Counter(), "errors": 0}
        conn = None
        while time.monotonic() < spec["deadline"]:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", spec["port"],
                                                  timeout=spec["timeout"])
            t0 = time.perf_counter()
            try:
                # A new (invoice, client) pair each time, as in the wrk script.
                agent = f"{USER_AGENT} c{len(stats['lat']) % 1009}"
                conn.request("GET", paths[i], headers={**headers, "User-Agent": agent})
                resp = conn.getresponse()
                resp.read()
            except (OSError, http.client.HTTPException):
                stats["errors"] += 1
                conn.close()
                conn = None
                continue
            stats["lat"].append((time.perf_counter() - t0) * 1000)
            stats["codes"][resp.status] += 1
            i = (i + 1) % len(paths)
        if conn is not None:
            conn.close()
        results.append(stats)

    spec["deadline"] = time.monotonic() + spec["duration"]
    threads = [threading.Thread(target=worker, args=(t,), daemon=True)
               for t in range(spec["conns"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(spec["duration"] + spec["timeout"] + 5)
    cpu = os.times()
    out.send({"lat": [x for r in results for x in r["lat"]],
              "codes": sum((r["codes"] for r in results), Counter()),
              "errors": sum(r["errors"] for r in results), "cpu": cpu.user + cpu.system})
    out.close()


def run_python(args, port: int, paths: list[str], duration: int) -> dict:
    ctx = mp.get_context("spawn")
    n = max(1, min(args.client_procs, args.connections))
    per = [args.connections // n + (1 if i < args.connections % n else 0) for i in range(n)]
    children = []
    started = time.monotonic()
    for i, conns in enumerate(per):
        parent, child = ctx.Pipe()
        spec = {"port": port, "paths": paths, "conns": conns, "offset": i * 101,
                "duration": duration, "timeout": args.timeout}
        proc = ctx.Process(target=_py_client, args=(spec, child), daemon=True)
        proc.start()
        children.append((proc, parent))
    results = []
    for proc, pipe in children:
        if not pipe.poll(duration + args.timeout + 60):
            raise RuntimeError("python load generator did not finish in time")
        results.append(pipe.recv())
        proc.join(10)
    secs = time.monotonic() - started  # includes process start-up: slightly pessimistic
    lat = sorted(x for r in results for x in r["lat"])
    codes = sum((r["codes"] for r in results), Counter())
    ok = sum(v for k, v in codes.items() if 200 <= k < 300)
    return {
        "seconds": secs, "responses": sum(codes.values()), "ok": ok,
        "non2xx": sum(codes.values()) - ok, "sock_errors": sum(r["errors"] for r in results),
        "timeouts": 0, "rps": ok / secs, "p50": percentile(lat, 50),
        "p99": percentile(lat, 99), "max": lat[-1] if lat else 0.0,
        "client_cpu": sum(r["cpu"] for r in results) / secs, "raw": "",
    }


def load(args, port: int, paths: list[str], paths_file: Path, script: Path,
         duration: int) -> dict:
    if args.loadgen == "wrk":
        return run_wrk(args, port, paths_file, script, duration)
    return run_python(args, port, paths, duration)


# -- one case --------------------------------------------------------------------------------

def smoke(port: int, path: str) -> dict:
    """One GET: the GIF and its headers, as the load will see them."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                 headers={"User-Agent": USER_AGENT, "Accept": ACCEPT})
    with urllib.request.urlopen(req, timeout=10) as resp:
        body = resp.read()
        headers = {k: v for k, v in resp.headers.items()
                   if k.lower() not in ("date", "server", "x-request-id", "connection")}
        return {"status": resp.status, "body": body, "headers": headers}


def count_events(store) -> int:
    return store.scalar("SELECT coalesce(sum(views), 0) FROM events")


def settle(store, limit: float = 15.0) -> int:
    """Wait until the events count stops moving (in-flight requests done); return it."""
    deadline = time.monotonic() + limit
    last = count_events(store)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = count_events(store)
        if now == last:
            return now
        last = now
    return last


def run_case(args, target: str, backend: str | None, store, workers: int, threads: int,
             keys: dict, paths: list[str], paths_file: Path, script: Path,
             reference: dict) -> dict:
    name = f"{target}-{backend}" if backend else target
    result = {"target": target, "backend": backend or "-", "workers": workers,
              "threads": threads, "connections": args.connections}
    gunicorn_args = ()
    if target == "baseline":  # the earlier checkout's code and gunicorn config
        gunicorn_args = ("--chdir", str(args.baseline),
                         "--config", str(args.baseline / "config" / "gunicorn.conf.py"))
    with web_server(f"pixel-{name}-{workers}x{threads}", store, keys, workers=workers,
                    threads=threads, app=BARE_APP if target == "bare" else SERVICE_APP,
                    gunicorn_args=gunicorn_args) as server:
        port, web = server.port, server.web
        result["cmd"] = web.args
        answer = smoke(port, paths[0])
        if answer["status"] != 200 or answer["body"] != reference["body"]:
            raise RuntimeError(f"{name}: unexpected answer {answer['status']} "
                               f"{answer['body'][:60]!r}")
        result["headers_match"] = answer["headers"] == reference["headers"]
        if args.warmup:
            load(args, port, paths, paths_file, script, args.warmup)
        before = settle(store) if store else 0
        cpu0 = tree_cpu(web.pid)
        r = load(args, port, paths, paths_file, script, args.duration)
        cpu1 = tree_cpu(web.pid)
        result["server_cpu"] = (sum(cpu1) - sum(cpu0)) / r["seconds"]
        result["server_sys"] = (cpu1[1] - cpu0[1]) / r["seconds"]
        result.update(r)
        if not web.running():
            raise RuntimeError(f"{name} died:\n{web.tail()}")
    text = log_text(web)
    result["record_failed"] = text.count("pixel.record_failed")
    result["tracebacks"] = text.count("Traceback")
    result["worker_timeouts"] = text.count("WORKER TIMEOUT")
    if store is not None:
        result["stored"] = count_events(store) - before
        result["not_human"] = store.scalar(
            "SELECT coalesce(sum(views), 0) FROM events WHERE verdict <> 'human'")
        slack = args.connections + result["timeouts"] + result["sock_errors"]
        result["stored_ok"] = result["ok"] <= result["stored"] <= result["ok"] + slack
    return result


def describe(r: dict) -> str:
    line = (f"{r['rps']:,.0f} req/s, p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, "
            f"non-2xx {r['non2xx']}, socket errors {r['sock_errors']}, timeouts "
            f"{r['timeouts']}, server CPU {r['server_cpu']:.2f}, load gen CPU "
            f"{r['client_cpu']:.2f}")
    if "stored" in r:
        line += (f", stored {r['stored']:,} for {r['ok']:,} 200s "
                 f"{'OK' if r['stored_ok'] else 'MISMATCH'}")
    return line


# -- report ----------------------------------------------------------------------------------

def label(r: dict) -> str:
    if r["target"] == "bare":
        return "bare Flask"
    if r["target"] == "baseline":
        return f"baseline relay, {r['backend']}"
    return f"relay, {r['backend']}"


def report(args, rows: list[dict], notes: list[str], facts: list, started: dt.datetime,
           durability: list[str]) -> str:
    several = len(args.connections) > 1

    def setting(r: dict) -> tuple[int, int, int]:
        return r["workers"], r["threads"], r["connections"]

    def name(w: int, t: int, c: int) -> str:
        return f"{w}x{t} -c{c}" if several else f"{w}x{t}"

    bare = {(r["round"], *setting(r)): r["rps"] for r in rows if r["target"] == "bare"}

    def ratio(r: dict) -> str:
        ref = bare.get((r["round"], *setting(r)))
        return f"{r['rps'] / ref:.2f}" if ref else "-"

    headers = ["round", "workers x threads" + (" -c connections" if several else ""),
               "server", "200s", "req/s", "p50 ms", "p99 ms",
               "max ms", "non-2xx", "socket errors / timeouts", "vs bare",
               "server CPU (cores, of it system)", "server CPU ms / request",
               "load gen CPU (cores)", "views stored / 200s"]
    table = [[r["round"], name(*setting(r)), label(r), f"{r['ok']:,}",
              f"{r['rps']:,.0f}", f"{r['p50']:.1f}", f"{r['p99']:.1f}", f"{r['max']:.0f}",
              r["non2xx"], f"{r['sock_errors']} / {r['timeouts']}", ratio(r),
              f"{r['server_cpu']:.2f} ({r.get('server_sys', 0):.2f})",
              f"{r['server_cpu'] / r['rps'] * 1000:.2f}" if r["rps"] else "-",
              f"{r['client_cpu']:.2f}",
              (f"{'OK' if r['stored_ok'] else 'MISMATCH'} {r['stored']:,} / {r['ok']:,}"
               if "stored" in r else "n/a")]
             for r in rows]

    # Summary: the median req/s per (server, setting) over rounds; best setting per server.
    cells: dict = {}
    for r in rows:
        cells.setdefault((label(r), *setting(r)), []).append(r)
    med = {k: statistics.median(x["rps"] for x in v) for k, v in cells.items()}
    servers = list(dict.fromkeys(label(r) for r in rows))
    configs = list(dict.fromkeys(setting(r) for r in rows))
    summary_headers = ["server"] + [name(*c) for c in configs] + ["best"]
    summary = []
    for s in servers:
        row = [s]
        for c in configs:
            v = med.get((s, *c))
            b = med.get(("bare Flask", *c))
            row.append("-" if v is None else
                       f"{v:,.0f}" + (f" ({v / b:.2f}x)" if b and s != "bare Flask" else ""))
        present = [(med[(s, *c)], *c) for c in configs if (s, *c) in med]
        best = max(present)
        row.append(f"{name(*best[1:])} ({best[0]:,.0f})")
        summary.append(row)
    best_bare = max((v for (s, *_c), v in med.items() if s == "bare Flask"), default=None)

    why = "--loadgen python" if shutil.which("wrk") else "wrk not installed"
    loadgen = (f"wrk ({subprocess.run(['wrk', '-v'], capture_output=True, text=True).stdout.split(chr(10))[0].strip()}), "  # noqa: E501
               f"-t{args.wrk_threads} -c{','.join(map(str, args.connections))} "
               f"-d{args.duration}s "
               f"--timeout {args.timeout}s --latency, Lua script rotating through the paths"
               if args.loadgen == "wrk" else
               f"python fallback ({why}): "
               f"{args.client_procs} processes, "
               f"{','.join(map(str, args.connections))} keep-alive http.client connections "
               "in all")
    lines = [
        "# Pixel benchmark (`GET /v1/pixel/<token>.gif`)",
        "",
        f"Run {started:%Y-%m-%d %H:%M} UTC with:",
        "",
        f"    {command_line()}",
        "",
        f"Load generator: {loadgen}.",
        "",
        "## Summary (median req/s over rounds; ratio to the bare app at the same setting)",
        "",
        markdown_table(summary_headers, summary),
        "",
    ]
    if best_bare:
        lines += [f"Best bare app: {best_bare:,.0f} req/s. Best of each relay against the "
                  "best bare: " + "; ".join(
                      f"{s}: {max(v for (s2, *_c), v in med.items() if s2 == s):,.0f} "
                      f"({max(v for (s2, *_c), v in med.items() if s2 == s) / best_bare:.2f}x)"
                      for s in servers if s != "bare Flask") + ".", ""]
    lines += [
        "## Every case",
        "",
        markdown_table(headers, table),
        "",
        "- 200s, req/s: 2xx answers counted by the load generator over the measured "
        f"{args.duration} s (after {args.warmup} s of unmeasured warm-up on the same server), "
        "divided by the measured time. p50/p99/max: load generator latency, request "
        "written to response read, on keep-alive connections (closed loop: wrk sends a "
        "connection's next request when the previous one is answered).",
        "- non-2xx: answers with status >= 400 (wrk's count). socket errors: connect/read/"
        "write errors; timeouts: no answer in the timeout.",
        "- views stored / 200s: rows added to `events` during the measured load, counted "
        "after the server stopped gracefully, against the 200s the load generator counted. "
        "OK means 200s <= rows <= 200s + connections + timeouts + socket errors: every "
        "answered view is stored; the few extra rows are requests the server answered after "
        "the load generator stopped reading (wrk stops on time with one request in flight "
        "per connection).",
        "- CPU: user+system seconds per wall second (1.00 = one core busy), in brackets the "
        "system (kernel) part. server = gunicorn master and workers (PostgreSQL's own "
        "backends are not counted; they run on the same cores); load gen = wrk (or the "
        "python processes). server CPU ms / request = server CPU / req/s: the cost of one "
        "pixel request in the web process.",
        "",
        "## Set-up",
        "",
        f"- tokens: {args.invoices} distinct invoices over {args.locations} locations "
        "(24-hex ids, 30-day expiry), signed with `service.ingest.pixels.PixelSigner` and the "
        "PIXEL_SIGNING_KEYS given to the server; shuffled; each wrk thread starts at its "
        f"own offset and rotates through all of them. User-Agent: `{USER_AGENT}`.",
        "- relay: `flask --app service db upgrade`, then `gunicorn --config "
        "config/gunicorn.conf.py \"service:create_app()\"` with RELAY_ENV=production "
        "(explicit secrets, JSON logs, gunicorn access log on, to `bench/out/`), "
        "WEB_CONCURRENCY and GUNICORN_THREADS as in the table, HOST=127.0.0.1 and a free "
        "port; MACHINE_OPENS=skip (the default); the classifier of `service/verdicts.py` "
        "finds no rule for the desktop Chrome User-Agent, so every view is `human`, "
        "forwarded, and also upserts its `documents` row (the most work a view can cost).",
        f"- bare: `gunicorn --config config/gunicorn.conf.py \"{BARE_APP}\"` with the same "
        "environment (`bench/bare_app.py`: the same GIF and headers from `service.ingest.pixels`, "
        "no store).",
        "- stores: one fresh SQLite file under `bench/out/` and one fresh PostgreSQL "
        "database for the whole run (each server restart reuses it; counts are deltas), "
        "dropped/deleted afterwards.",
        "",
        "## Durability settings in force",
        "",
    ] + [f"- {d}" for d in durability] + [
        "",
        *machine_section(facts, notes),
    ]
    return "\n".join(lines) + "\n"


def sqlite_durability(url: str) -> str:
    """What the service's own engine sets on a SQLite connection."""
    from service.store.engine import create_engine

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
            sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
    finally:
        engine.dispose()
    names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
    return (f"SQLite (service.store.engine.create_engine): journal_mode={mode}, "
            f"synchronous={names.get(sync, sync)}, writes in BEGIN IMMEDIATE; the web "
            "processes' group commits (service.store.write_connection) commit with "
            "synchronous=NORMAL and fdatasync the WAL after releasing the write lock, "
            "before the response")


def main(argv=None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    notes: list[str] = []
    backends, facts = usable_backends(args.backends, args.pg_url, notes,
                                      need_pg=any(t != "bare" for t in args.targets))
    facts.append(("load generator", "wrk" if args.loadgen == "wrk" else "python fallback"))
    print("\n".join(f"{k}: {v}" for k, v in facts), flush=True)
    if args.loadgen == "python":
        notes.append("wrk was not used: the python load generator's own CPU cost is much "
                     "higher (it shares the cores with the server), so absolute numbers are "
                     "lower than with wrk")
    keys = bench_secrets()
    OUT.mkdir(parents=True, exist_ok=True)
    paths = mint_paths(keys, args.invoices, args.locations)
    paths_file = OUT / "pixel-paths.txt"
    paths_file.write_text("\n".join(paths) + "\n")
    script = OUT / "pixel-rotate.lua"
    script.write_text(WRK_SCRIPT)
    durability: list[str] = []
    with ExitStack() as stack:
        stores = {}
        for b in backends:
            if not any(t != "bare" for t in args.targets):
                break
            store = stack.enter_context(fresh_store(b, "pixel", pg_url=args.pg_url,
                                                    keep=args.keep))
            run_checked(f"pixel-{b}-db-upgrade", flask("db", "upgrade"),
                        service_env(store.url, keys))
            stores[b] = store
            if b == "sqlite":
                durability.append(sqlite_durability(store.url))
        if "postgresql" in stores:
            pg = stores["postgresql"]
            durability.append(
                "PostgreSQL: synchronous_commit=" + pg.scalar("SHOW synchronous_commit")
                + ", fsync=" + pg.scalar("SHOW fsync") + ", wal_sync_method="
                + pg.scalar("SHOW wal_sync_method") + ", commit_delay="
                + pg.scalar("SHOW commit_delay"))
        durability.append("each relay GET commits its view before the response is written "
                          "(`pixel_front.record_view` returns after the group commit holding it)")
        # The reference answer: what the bare app sends (the relay must send the same).
        reference = reference_answer(keys, paths[0])
        plan = []
        for t in args.targets:
            if t == "bare":
                plan.append(("bare", None))
            else:
                plan += [(t, b) for b in stores]
        settings = [(w, th, c) for w, th in args.configs for c in args.connections]

        def case(setting: tuple, server: tuple, rnd: int) -> dict:
            (w, th, conns), (target, backend) = setting, server
            print(f"[round {rnd}] {w}x{th} -c{conns} "
                  f"{target}{'/' + backend if backend else ''}: "
                  f"{args.warmup} s warm-up + {args.duration} s ...", flush=True)
            case_args = argparse.Namespace(**{**vars(args), "connections": conns})
            return run_case(case_args, target, backend, stores.get(backend), w, th,
                            keys, paths, paths_file, script, reference)

        def check(r: dict) -> list[str]:
            rnd, w, th = r["round"], r["workers"], r["threads"]
            out = []
            if not r["headers_match"]:
                out.append(f"{label(r)} {w}x{th}: response headers differ from the "
                           "bare app's")
            if r.get("stored_ok") is False:
                out.append(f"round {rnd} {label(r)} {w}x{th}: STORED "
                           f"{r['stored']} rows for {r['ok']} 200s")
            if r.get("not_human"):
                out.append(f"round {rnd} {label(r)} {w}x{th}: {r['not_human']} "
                           "views were not classified human")
            for key, what in (("record_failed", "pixel.record_failed log lines"),
                              ("tracebacks", "tracebacks"),
                              ("worker_timeouts", "worker timeouts")):
                if r[key]:
                    out.append(f"round {rnd} {label(r)} {w}x{th}: {r[key]} {what} "
                               "in the server log")
            return out

        rows = run_matrix(
            settings, case, inner=plan, rounds=args.rounds, notes=notes,
            where=lambda s, t, rnd: f"round {rnd} {s[0]}x{s[1]} {t[0]} {t[1] or ''}",
            describe=lambda r: "  " + describe(r), check=check)
    load_now = os.getloadavg()
    notes.append(f"load average at the end: {' '.join(f'{x:.2f}' for x in load_now)} "
                 f"on {os.cpu_count()} CPUs")
    # Keeps the hand-written analysis (everything from the marker on) across reruns.
    write_report(report(args, rows, notes, facts, started, durability), args.output,
                 marker=MARKER)
    ok = rows and all(r.get("stored_ok", True) for r in rows) and not any(
        r["record_failed"] for r in rows)
    return 0 if ok else 1


def reference_answer(keys: dict, path: str) -> dict:
    """Start the bare app once to learn the reference answer (body and headers)."""
    with web_server("pixel-reference", None, keys, workers=1, threads=1,
                    app=BARE_APP) as server:
        return smoke(server.port, path)


if __name__ == "__main__":
    sys.exit(main())
