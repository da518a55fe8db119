"""Relay vs a bare Flask app: pixel GET and JSON ingest, throughput and latency, in one run.

For each gunicorn setting (``--configs``, WEB_CONCURRENCYxGUNICORN_THREADS; default the
shipped default on this machine, 2 x nproc workers x 16 threads) and each server, on the
same gunicorn config file (``config/gunicorn.conf.py``), each on a free 127.0.0.1 port:

- ``bare``: ``bench/bare_app.py``: the same GIF and headers for ``GET /v1/pixel/...``, and a
  ``POST /v1/events`` that reads the body, checks nothing, stores nothing and answers 202;
- ``relay``: the service (``service:create_app()``) after ``flask --app service db upgrade``,
  on a fresh SQLite file and on a fresh PostgreSQL database (``--backends``).

Each server gets, in turn, ``--warmup`` s then ``--duration`` s of wrk (``--connections``
keep-alive connections, closed loop) on:

- ``pixel``: ``GET /v1/pixel/<token>.gif`` rotating through ``--invoices`` signed tokens
  (``bench/pixel.py``'s tokens, Lua script and wrk runner, imported, not copied);
- ``ingest``: ``POST /v1/events``, one event per request with an ingest key, every event
  with a new ``eventId`` and ``invoiceId`` (no duplicates, no coalescing: each 202 is a
  new stored view), over ``--locations`` locations.

Reported per case: 2xx/s, p50/p99/max latency (wrk's), errors, server CPU per request, and
for the relay the proof: rows added to ``events`` (counted in the store once the count
stops moving) against the 2xx wrk counted; rows below the 2xx are a failure. No forwarder
runs: this measures accepting events, not delivering them (bench/inline.py does both).

    .venv/bin/python bench/compare.py                      # 15 s per case, ~3 min
    .venv/bin/python bench/compare.py --duration 3 --warmup 1 --backends sqlite \\
        --output bench/out/compare.md                       # a quick check of the script

Results: stdout, ``--output`` (``bench/results-compare.md``) and a chart beside it
(``.png``). Traffic goes to 127.0.0.1 only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402 - after the path set-up, so `python bench/compare.py` works
    OUT,
    PROBLEMS,
    ROOT,
    SERVICE_APP,
    Process,
    bench_secrets,
    check_names,
    fresh_store,
    log_text,
    machine_section,
    markdown_table,
    pyplot,
    relative_to,
    report_head,
    run_matrix,
    store_options,
    tree_cpu,
    usable_backends,
    web_server,
    write_report,
)
from pixel import (  # noqa: E402
    BARE_APP,
    WRK_SCRIPT,
    _configs,
    _csv,
    mint_paths,
    run_wrk,
    settle,
)

DEFAULTS = {"duration": 15, "warmup": 2}
# One event per request; the settings file (wrk's first script argument) holds the ingest
# key, a nonce new for every wrk run (so no eventId repeats across runs), then one
# locationId per line. The thread numbering (setup()) and the report line (done()) are
# bench/pixel.py's, taken from its script.
INGEST_LUA = r"""-- bench/compare.py: POST /v1/events, one new event per request.
local locations = {}
local nonce = "x"
local n = 0
""" + WRK_SCRIPT[WRK_SCRIPT.index("local next_tid"):WRK_SCRIPT.index("function init(")] + r"""
function init(args)
  local lines = {}
  for line in io.lines(args[1]) do
    if #line > 0 then lines[#lines + 1] = line end
  end
  nonce = lines[2]
  for i = 3, #lines do locations[#locations + 1] = lines[i] end
  wrk.method = "POST"
  wrk.path = "/v1/events"
  wrk.headers["Authorization"] = "Bearer " .. lines[1]
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  n = n + 1
  local id = string.format("%s-%d-%d", nonce, tid or 0, n)
  local body = string.format(
    '{"locationId":"%s","invoiceId":"inv-%s","eventId":"ev-%s","source":"bench"}',
    locations[(n + 7 * (tid or 0)) % #locations + 1], id, id)
  return wrk.format(nil, nil, nil, body)
end

""" + WRK_SCRIPT[WRK_SCRIPT.index("function done("):]


def parse_args(argv=None) -> argparse.Namespace:
    cpus = os.cpu_count() or 1
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--configs", type=_configs, default=_configs(f"{2 * cpus}x16"),
                   help="gunicorn WEB_CONCURRENCYxGUNICORN_THREADS settings (default: the "
                        "shipped default on this machine)")
    p.add_argument("--duration", type=int, default=DEFAULTS["duration"],
                   help="measured seconds per case")
    p.add_argument("--warmup", type=int, default=DEFAULTS["warmup"],
                   help="seconds of unmeasured load before each case")
    p.add_argument("--connections", type=int, default=32, help="wrk -c")
    p.add_argument("--wrk-threads", type=int, default=2, help="wrk -t")
    p.add_argument("--timeout", type=int, default=10, help="wrk --timeout (s)")
    p.add_argument("--backends", type=_csv, default=["sqlite", "postgresql"],
                   help="stores for the relay: sqlite, postgresql")
    p.add_argument("--endpoints", type=_csv, default=["pixel", "ingest"],
                   help="pixel, ingest")
    p.add_argument("--invoices", type=int, default=1000, help="distinct pixel tokens")
    p.add_argument("--locations", type=int, default=20, help="distinct locations")
    p.add_argument("--stubbed-store", action="store_true",
                   help="also run the relay with Store.record_views stubbed out "
                        "(bench/stubbed_store_app.py): the web path alone, nothing stored")
    p.add_argument("--rounds", type=int, default=1,
                   help="rounds of every case, interleaved (every server in turn, the order "
                        "reversed on even rounds); ratios are taken within a round")
    store_options(p, "results-compare.md", "the report; the chart goes beside it with .png")
    args = p.parse_args(argv)
    check_names(p, args.backends, ("sqlite", "postgresql"), "backend")
    check_names(p, args.endpoints, ("pixel", "ingest"), "endpoint")
    if not shutil.which("wrk"):
        p.error("wrk is not installed (apt-get install -y wrk)")
    return args


def measure(args, endpoint: str, port: int, server: Process, store, files: dict, *,
            after_warmup=None) -> dict:
    """Warm up, call ``after_warmup()`` if given, then one measured wrk run; the relay's
    stored rows checked against its 2xx. ``r["started"]``: when the measured run began."""
    wrk_args = SimpleNamespace(wrk_threads=args.wrk_threads, connections=args.connections,
                               timeout=args.timeout)

    def run(duration: int) -> dict:
        if endpoint == "ingest":  # a new nonce: eventIds never repeat across runs
            lines = [files["key"], secrets.token_hex(4)] + files["locations"]
            files["ingest_settings"].write_text("\n".join(lines) + "\n")
            return run_wrk(wrk_args, port, files["ingest_settings"], files["ingest_lua"],
                           duration)
        return run_wrk(wrk_args, port, files["paths"], files["pixel_lua"], duration)

    if args.warmup:
        run(args.warmup)
    if after_warmup is not None:
        after_warmup()
    before = settle(store) if store else 0
    cpu0 = tree_cpu(server.pid)
    started = time.monotonic()
    r = run(args.duration)
    r["started"] = started
    cpu1 = tree_cpu(server.pid)
    r.pop("raw")
    r["server_cpu_ms"] = (sum(cpu1) - sum(cpu0)) / max(r["ok"], 1) * 1000
    r["server_cores"] = (sum(cpu1) - sum(cpu0)) / r["seconds"]
    if not server.running():
        raise RuntimeError(f"{server.name} died:\n{server.tail()}")
    if store is not None:
        r["stored"] = settle(store) - before
        slack = args.connections + r["timeouts"] + r["sock_errors"]
        r["stored_ok"] = r["ok"] <= r["stored"] <= r["ok"] + slack
    return r


def main(argv=None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    notes: list[str] = []
    backends, facts = usable_backends(args.backends, args.pg_url, notes)
    print("\n".join(f"{k}: {v}" for k, v in facts), flush=True)
    keys = bench_secrets()
    OUT.mkdir(parents=True, exist_ok=True)
    files = {"paths": OUT / "compare-pixel-paths.txt", "pixel_lua": OUT / "compare-pixel.lua",
             "ingest_lua": OUT / "compare-ingest.lua",
             "ingest_settings": OUT / "compare-ingest-settings.txt",
             "key": keys["INGEST_API_KEYS"],
             "locations": [f"loc-{i:03d}" for i in range(args.locations)]}
    files["paths"].write_text("\n".join(mint_paths(keys, args.invoices, args.locations)) + "\n")
    files["pixel_lua"].write_text(WRK_SCRIPT)
    files["ingest_lua"].write_text(INGEST_LUA)
    with ExitStack() as stack:
        stores = [None] + [stack.enter_context(fresh_store(b, "compare", pg_url=args.pg_url,
                                                           keep=args.keep))
                           for b in backends]
        if args.stubbed_store:  # the relay on SQLite, its write stubbed (an upper bound)
            stubbed = stack.enter_context(fresh_store("sqlite", "compare-stubbed",
                                                      pg_url=args.pg_url, keep=args.keep))
            stores.append(stubbed)
        else:
            stubbed = None

        def server_of(store) -> str:
            if store is None:
                return "bare Flask"
            return STUBBED if store is stubbed else f"relay, {store.backend}"

        def case(config: tuple[int, int], store, _round: int):
            """One server, each endpoint in turn: a row each."""
            workers, threads = config
            name = server_of(store)
            log = ("bare" if store is None else "stubbed" if store is stubbed
                   else f"relay-{store.backend}")
            app = (BARE_APP if store is None else STUBBED_APP if store is stubbed
                   else SERVICE_APP)
            with web_server(f"compare-{log}-{workers}x{threads}", store, keys,
                            workers=workers, threads=threads,
                            app=app) as server:
                for endpoint in args.endpoints:
                    print(f"{workers}x{threads} {name} {endpoint}: {args.warmup} s "
                          f"warm-up + {args.duration} s ...", flush=True)
                    r = measure(args, endpoint, server.port, server.web,
                                None if store is stubbed else store, files)
                    r.update(server=name, endpoint=endpoint, workers=workers,
                             threads=threads)
                    yield r
            text = log_text(server.web)
            for what in PROBLEMS:
                if text.count(what):
                    notes.append(f"{workers}x{threads} {name}: {text.count(what)} {what!r} "
                                 f"in {server.web.stdout_path.relative_to(ROOT)}")

        rows = run_matrix(args.configs, case, inner=stores, notes=notes, rounds=args.rounds,
                          where=lambda c, st, _r: f"{c[0]}x{c[1]} {server_of(st)}",
                          describe=lambda r: "  " + describe(r))
    notes += [f"{r['workers']}x{r['threads']} {r['server']} {r['endpoint']}: STORED "
              f"{r['stored']} rows for {r['ok']} 2xx" for r in rows if r.get("stored_ok") is False]
    notes.append("load average at the end: "
                 + " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} CPUs")
    chart = args.output.with_suffix(".png")
    draw(rows, chart)
    write_report(report(args, rows, notes, facts, started, chart), args.output,
                 also=f" and {chart}")
    ok = rows and all(r.get("stored_ok", True) for r in rows) and not any(
        "FAILED" in n or "record_failed" in n for n in notes)
    return 0 if ok else 1


def describe(r: dict) -> str:
    line = (f"{r['rps']:,.0f} req/s, p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, "
            f"non-2xx {r['non2xx']}, socket errors {r['sock_errors']}, timeouts {r['timeouts']}, "
            f"server {r['server_cpu_ms']:.2f} CPU ms/request")
    if "stored" in r:
        line += (f", stored {r['stored']:,} for {r['ok']:,} 2xx "
                 f"{'OK' if r['stored_ok'] else 'MISMATCH'}")
    return line


STUBBED = "relay, store stubbed"
STUBBED_APP = "bench.stubbed_store_app:create_app()"
ENDPOINT_NAMES = {"pixel": "pixel GET", "ingest": "POST /v1/events (one event)"}
CHART_NAMES = {"pixel": "pixel GET", "ingest": "POST /v1/events"}  # short: no overlap


def ratio_summary(rows: list[dict], bare: dict) -> list[str]:
    """With several rounds: each relay's ratio to the bare app of the same round, and
    their median (the rounds are interleaved, so a passing load hits both alike)."""
    if max((r["round"] for r in rows), default=1) < 2:
        return []
    ratios: dict[tuple, list[float]] = {}
    for r in rows:
        ref = bare.get((r["endpoint"], r["workers"], r["threads"], r["round"]))
        if r["server"] != "bare Flask" and ref:
            key = (ENDPOINT_NAMES[r["endpoint"]], f"{r['workers']}x{r['threads']}", r["server"])
            ratios.setdefault(key, []).append(r["rps"] / ref)
    table = [[*key, ", ".join(f"{x:.2f}" for x in found),
              f"{statistics.median(found):.2f}x"] for key, found in ratios.items()]
    return [markdown_table(["endpoint", "workers x threads", "server",
                            "ratio to bare, each round", "median"], table), ""]


def draw(rows: list[dict], path: Path) -> None:
    """Bars: req/s per server for each endpoint and setting; p50 and p99 beside them."""
    if not rows:
        return
    plt = pyplot()
    groups = list(dict.fromkeys((r["endpoint"], r["workers"], r["threads"]) for r in rows))
    servers = list(dict.fromkeys(r["server"] for r in rows))
    cell = {(r["endpoint"], r["workers"], r["threads"], r["server"]): r for r in rows}
    colours = ["#9e9e9e", "#1f77b4", "#ff7f0e", "#2ca02c"]
    width = 0.8 / len(servers)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    labels = [f"{CHART_NAMES[e]}\n{w}x{t}" for e, w, t in groups]
    for k, server in enumerate(servers):
        xs = [g + (k - (len(servers) - 1) / 2) * width for g in range(len(groups))]
        found = [cell.get((*grp, server)) for grp in groups]
        rps = [r["rps"] if r else 0 for r in found]
        bars = ax1.bar(xs, rps, width, label=server, color=colours[k % len(colours)])
        for bar, r, grp in zip(bars, found, groups, strict=True):
            bare = cell.get((*grp, "bare Flask"))
            if r and bare and server != "bare Flask" and bare["rps"]:
                ax1.annotate(f"{r['rps'] / bare['rps']:.2f}x", (bar.get_x() + width / 2,
                             bar.get_height()), ha="center", va="bottom", fontsize=8)
        p50 = [r["p50"] if r else 0 for r in found]
        p99 = [r["p99"] if r else 0 for r in found]
        ax2.bar(xs, p99, width, color=colours[k % len(colours)], alpha=0.35,
                label=f"{server} p99")
        ax2.bar(xs, p50, width, color=colours[k % len(colours)], label=f"{server} p50")
        for x, a, b in zip(xs, p50, p99, strict=True):
            if b:
                ax2.annotate(f"{b:,.0f}", (x, b), ha="center", va="bottom", fontsize=7)
                ax2.annotate(f"{a:,.0f}", (x, a), ha="center", va="top", fontsize=7,
                             color="white")
    for ax in (ax1, ax2):
        ax.set_xticks(range(len(groups)), labels)
        ax.grid(axis="y", alpha=0.3)
    ax1.set_ylabel("2xx answers per second (more is better)")
    ax1.set_title("Throughput (ratio to bare Flask above the bars)")
    ax1.legend(fontsize=8)
    ax2.set_yscale("log")
    ax2.set_ylabel("latency, ms, log scale (less is better)")
    ax2.set_title("p50 (solid) and p99 (light) latency")
    ax2.legend(fontsize=7, ncol=2)
    fig.suptitle("Relay vs bare Flask, same gunicorn settings, wrk on 127.0.0.1 "
                 f"({os.cpu_count()} CPUs)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(args, rows: list[dict], notes: list[str], facts: list, started: dt.datetime,
           chart: Path) -> str:
    bare = {(r["endpoint"], r["workers"], r["threads"], r["round"]): r["rps"] for r in rows
            if r["server"] == "bare Flask"}
    headers = ["endpoint", "workers x threads", "server", "round", "2xx/s", "vs bare", "p50 ms",
               "p99 ms", "max ms", "non-2xx", "socket errors / timeouts",
               "server CPU ms / request", "server CPU (cores)", "rows stored / 2xx"]
    table = []
    for r in rows:
        ref = bare.get((r["endpoint"], r["workers"], r["threads"], r["round"]))
        table.append([
            ENDPOINT_NAMES[r["endpoint"]], f"{r['workers']}x{r['threads']}", r["server"],
            r["round"], f"{r['rps']:,.0f}",
            f"{r['rps'] / ref:.2f}x" if ref and r["server"] != "bare Flask" else "-",
            f"{r['p50']:.1f}", f"{r['p99']:.1f}", f"{r['max']:.0f}", r["non2xx"],
            f"{r['sock_errors']} / {r['timeouts']}", f"{r['server_cpu_ms']:.2f}",
            f"{r['server_cores']:.2f}",
            (f"{'OK' if r['stored_ok'] else 'MISMATCH'} {r['stored']:,} / {r['ok']:,}"
             if "stored" in r else "n/a")])
    short = args.duration < DEFAULTS["duration"]
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True,
                                 timeout=10).stdout.split("\n")[0].strip()
    lines = [
        *report_head("Relay vs bare Flask: pixel GET and JSON ingest", started=started,
                     short=short),
        f"![throughput and latency]({relative_to(chart, args.output)})",
        "",
        markdown_table(headers, table),
        "",
        *ratio_summary(rows, bare),
        f"- Load: {wrk_version}, -t{args.wrk_threads} -c{args.connections} "
        f"-d{args.duration}s --timeout {args.timeout}s --latency, after {args.warmup} s of "
        "unmeasured warm-up on the same server; closed loop (a connection sends its next "
        "request when the previous one is answered). Latency: request written to response "
        "read, wrk's percentiles.",
        f"- pixel: `GET /v1/pixel/<token>.gif` rotating through {args.invoices} signed tokens "
        f"over {args.locations} locations, desktop Chrome User-Agent (bench/pixel.py's "
        "tokens and Lua script). ingest: `POST /v1/events`, one JSON event per request "
        "with the ingest key, a new `eventId` and `invoiceId` each (so every 202 is a new "
        f"stored view, none coalesced), over {args.locations} locations.",
        "- bare Flask: `bench/bare_app.py` (the same GIF and headers; a `POST /v1/events` "
        "that reads the body and answers 202 without checking or storing anything). relay: "
        "`service:create_app()`, RELAY_ENV=production, on a fresh SQLite file (WAL, "
        "synchronous=FULL) or PostgreSQL database: every 2xx is a committed view. Both under "
        "`gunicorn --config config/gunicorn.conf.py` with the WEB_CONCURRENCY x "
        "GUNICORN_THREADS shown, access log on (to `bench/out/`).",
        *(["- relay, store stubbed (`--stubbed-store`): `bench/stubbed_store_app.py`, the "
           "relay with `Store.record_views` answering at once and writing nothing: the web "
           "path alone (key, body, marshmallow, answer), an upper bound for the relay; "
           "the gap between it and the relay is the durable write."]
          if args.stubbed_store else []),
        "- rows stored / 2xx: rows added to `events` during the measured run (counted once "
        "the count stops moving) against the 2xx wrk counted. OK: 2xx <= rows <= 2xx + "
        "connections + timeouts + socket errors (wrk stops with a request in flight per "
        "connection, answered after it stopped reading). Fewer rows than 2xx would be an "
        "answered view that was not stored.",
        "- server CPU: user+system of the gunicorn master and workers (not PostgreSQL's "
        "backends, which share the cores), per 2xx answer and per wall second.",
        "- No forwarder runs here; delivery to HighLevel is measured by bench/inline.py and "
        "bench/soak.py.",
        "",
        *machine_section(facts, notes),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
