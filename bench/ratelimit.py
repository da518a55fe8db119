"""Rate-limit benchmark: how close one real forwarder gets to what HighLevel's limit allows.

A backlog of ``--locations`` (20) x ``--per-location`` (200) distinct documents, each
location with its own token, is delivered through the fake HighLevel run as a command in
its own process:

    python -m tests.fake_highlevel --port N --latency 0.15 --timestamps --no-openapi

which answers each PATCH after 0.15 s and enforces 100 requests per 10 s per token (its
default; ``--rate-max`` / ``--interval-ms`` change it), answering 429 beyond. Since each
location has its own token, the fake's per-token limit is the per-location limit the
service must respect. For each store (a fresh SQLite file by default; ``--db postgresql``)
and each FORWARD_CONCURRENCY (64 and 32 by default) it:

1. runs ``flask --app service db upgrade``; stores the tokens with the service's
   ``TokenVault`` and the views with ``Store.record_views`` (all due at once);
2. starts the fake, then one ``flask --app service forwarder`` with the service's default
   limiter settings (``RATE_LIMIT_BURST`` 100/10s: the service learns the rest from the
   fake's ``X-RateLimit-*`` headers);
3. polls the store until every document is delivered (bounded by ``--timeout``), sampling
   the ``rate_limits`` table, then stops the forwarder and the fake with SIGTERM.

The figure is the makespan (the fake's first PATCH received to its last 200 answered)
over the ideal the limit allows: with D documents per location, M requests per window of
I seconds and latency L, the last window starts at (ceil(D / M) - 1) x I, so the ideal is
(ceil(D / M) - 1) x I + L = 10.15 s for the defaults. The 429s the fake answered should
be zero. Results: stdout and ``bench/results-ratelimit.md``.

    .venv/bin/python bench/ratelimit.py                         # SQLite, c=64 and c=32
    .venv/bin/python bench/ratelimit.py --db sqlite,postgresql
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import statistics
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402 - after the path set-up, so `python bench/ratelimit.py` works
    ROOT,
    Process,
    bench_secrets,
    check_names,
    command_line,
    facts_block,
    flask,
    free_port,
    fresh_store,
    markdown_table,
    preload_backlog,
    process_tree_cpu,
    run_checked,
    run_matrix,
    service_env,
    start,
    store_options,
    usable_backends,
    wait_documents_delivered,
    wait_for,
    write_report,
)
from ratelimit_outage import (  # noqa: E402
    check_outage,
    describe_outage,
    outage_ok,
    outage_options,
    outage_report,
    run_outage,
)

UTC = dt.UTC
# One record per answered request, printed by the fake's main() with --timestamps. Its
# handler threads print concurrently, and print() writes the text and the newline
# separately, so records are found anywhere in the output, not line by line.
FAKE_RECORD = re.compile(
    r"(?P<method>[A-Z]+) (?P<path>/\S+) -> (?P<status>\d+) (?P<kind>\S+) (?P<doc>\S+) "
    r"token=(?:\.\.\.)?(?P<tail>\S+) received=(?P<received>\d+\.\d{6}) "
    r"answered=(?P<answered>\d+\.\d{6})")


def _ints(value: str) -> list[int]:
    return [int(v) for v in value.split(",") if v.strip()]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--locations", type=int, default=20, help="locations, one token each")
    p.add_argument("--per-location", type=int, default=200,
                   help="distinct due documents per location")
    p.add_argument("--concurrency", type=_ints, default=[64],
                   help="FORWARD_CONCURRENCY values to run (comma list)")
    p.add_argument("--forwarders", type=_ints, default=[1, 2],
                   help="forwarder processes sharing the budget (comma list)")
    p.add_argument("--cases", default="drain,outage", help="comma list of drain, outage")
    p.add_argument("--baseline", type=Path, default=None,
                   help="an earlier checkout (e.g. `git worktree add --detach "
                        "/work/wt-drain-base main`): its forwarder runs as target 'baseline' "
                        "beside this one, in the same run, on the same store schema")
    outage_options(p)
    p.add_argument("--latency", type=float, default=0.15,
                   help="seconds the fake HighLevel takes to answer each PATCH")
    p.add_argument("--rate-max", type=int, default=100,
                   help="requests per token per window the fake allows (its default)")
    p.add_argument("--interval-ms", type=int, default=10_000,
                   help="the fake's rate-limit window (its default)")
    p.add_argument("--db", default="sqlite", help="comma list of sqlite, postgresql")
    p.add_argument("--validate-openapi", action="store_true",
                   help="let the fake validate each request against ../shared/highlevel-openapi "
                        "(costs the fake CPU; needs --fake-server cheroot)")
    p.add_argument("--fake-server", choices=("uvicorn", "cheroot"), default="uvicorn",
                   help="the fake's HTTP server: uvicorn (a quarter of cheroot's CPU per "
                        "run: less of the cores the forwarders are measured on) or cheroot "
                        "(the tests' server)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="give up on a run after this many seconds")
    store_options(p, "results-ratelimit.md")
    args = p.parse_args(argv)
    args.backends = [b.strip() for b in args.db.split(",") if b.strip()]
    check_names(p, args.backends, ("sqlite", "postgresql"), "store")
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    check_names(p, args.cases, ("drain", "outage"), "case")
    if args.validate_openapi and args.fake_server != "cheroot":
        p.error("--validate-openapi needs --fake-server cheroot")
    args.targets = ["relay"]
    if args.baseline is not None:
        args.baseline = args.baseline.resolve()
        if not (args.baseline / "service" / "__init__.py").is_file():
            p.error(f"--baseline {args.baseline}: no service/ package there")
        args.targets.append("baseline")
    if args.locations < 1 or args.per_location < 1 or args.latency < 0 or args.rate_max < 1:
        p.error("--locations, --per-location, --rate-max must be >= 1, --latency >= 0")
    return args


def forwarder_command(args, target: str) -> list[str]:
    """``flask --app service forwarder``, from this checkout or the baseline's."""
    if target == "baseline":  # flask imports the package from the directory given
        return [*flask()[:2], str(args.baseline / "service"), "forwarder"]
    return flask("forwarder")


# -- the ideal --------------------------------------------------------------------------

def ideal_seconds(args) -> float:
    """Unbounded concurrency: the last window starts at (ceil(D/M) - 1) x I, then one L."""
    windows = math.ceil(args.per_location / args.rate_max)
    return (windows - 1) * args.interval_ms / 1000 + args.latency


def ideal_at_concurrency(args, concurrency: int) -> float:
    """A lower bound with ``concurrency`` sends in flight: the sends of the last window
    cannot start before it opens, and C slots need ceil(n / C) rounds of L for n sends."""
    windows = math.ceil(args.per_location / args.rate_max)
    last = args.per_location - (windows - 1) * args.rate_max
    gated = ((windows - 1) * args.interval_ms / 1000
             + math.ceil(args.locations * last / concurrency) * args.latency)
    ungated = math.ceil(args.locations * args.per_location / concurrency) * args.latency
    return max(gated, ungated)


# -- one run ----------------------------------------------------------------------------

def token_for(n: int) -> str:
    """A token whose last four characters (all the fake prints) name the location."""
    return f"bench-rl-token-{n:04d}"


def start_fake(args, label: str) -> tuple[Process, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "tests.fake_highlevel", "--port", str(port),
           "--latency", f"{args.latency:g}", "--timestamps"]
    if args.rate_max != 100:
        cmd += ["--rate-limit-max", str(args.rate_max)]
    if args.interval_ms != 10_000:
        cmd += ["--interval-ms", str(args.interval_ms)]
    if not args.validate_openapi:
        cmd.append("--no-openapi")
    cmd += ["--server", args.fake_server]
    fake = start(f"{label}-fake", cmd, dict(os.environ, PYTHONUNBUFFERED="1"))

    def listening() -> bool:
        assert fake.running(), f"fake HighLevel exited early:\n{fake.tail()}"
        return "listening on" in fake.stdout()

    try:
        wait_for(listening, timeout=60, what="the fake HighLevel to listen")
    except AssertionError:
        fake.stop()
        raise
    return fake, f"http://127.0.0.1:{port}"


def _rows(store, sql: str) -> list:
    import sqlalchemy as sa

    with store.engine.connect() as conn:
        return list(conn.execute(sa.text(sql)))


def _as_dt(value) -> dt.datetime | None:
    """SQLite hands back timestamps as text; PostgreSQL as datetimes."""
    if value is None or isinstance(value, dt.datetime):
        return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)
    parsed = dt.datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def run_one(args, backend: str, concurrency: int, keys: dict, *, target: str = "relay",
            forwarders: int = 1) -> dict:
    label = f"ratelimit-{backend}-{target}-f{forwarders}-c{concurrency}"
    total = args.locations * args.per_location
    with fresh_store(backend, "ratelimit", pg_url=args.pg_url, keep=args.keep) as store:
        # RATE_LIMIT_BURST and RATE_LIMIT_DAILY: the service's defaults (none inherited)
        env = service_env(store.url, keys, FORWARD_CONCURRENCY=concurrency)
        run_checked(f"{label}-db-upgrade", flask("db", "upgrade"), env)
        preload_backlog(store, keys, locations=args.locations, documents=total, token=token_for)

        fake, url = start_fake(args, label)
        env["HIGHLEVEL_BASE_URL"] = url
        samples: list[dict] = []  # the rate_limits table over time
        loads: list[float] = []
        next_sample = [0.0]

        def take_sample(delivered: int) -> None:  # every 0.5 s
            if time.monotonic() >= next_sample[0]:
                next_sample[0] = time.monotonic() + 0.5
                now = dt.datetime.now(UTC)
                paused = [(r[0], r[1]) for r in _rows(
                    store, "SELECT resource, pause_reason, paused_until FROM rate_limits")
                    if r[2] is not None and _as_dt(r[2]) > now]
                samples.append({"t": time.monotonic(), "delivered": delivered,
                                "paused": paused})
                loads.append(os.getloadavg()[0])

        fake_cpu0 = process_tree_cpu(fake.pid)  # listening: its start-up left out
        t_spawn = time.monotonic()
        fwds = [start(f"{label}-forwarder{n}", forwarder_command(args, target), env)
                for n in range(forwarders)]
        fwd = fwds[0]
        try:
            delivered, done_at = wait_documents_delivered(
                store, fwd, total, deadline=t_spawn + args.timeout, interval=0.2,
                each=take_sample)
            fwd_cpu = sum(process_tree_cpu(f.pid) for f in fwds)
            fake_cpu = process_tree_cpu(fake.pid) - fake_cpu0
        finally:
            stop_s = max(f.stop() for f in fwds)
            fake.stop(10)
        limits = [dict(r._mapping) for r in _rows(
            store, "SELECT resource, burst_max, interval_ms, used, window_ends_at, "
                   "paused_until, pause_reason FROM rate_limits ORDER BY resource")]
        outcomes = dict(Counter(r[0] for r in _rows(store,
                                                   "SELECT outcome FROM delivery_log")))
        statuses = dict(Counter(r[0] for r in _rows(
            store, "SELECT status FROM documents")))
    fake_stats = parse_fake_log(fake.stdout_path, args)
    fwd_stats = parse_forwarder_log(*(f.stdout_path for f in fwds))
    makespan = fake_stats["makespan"]
    ideal = ideal_seconds(args)
    ideal_c = ideal_at_concurrency(args, concurrency * forwarders)  # every process's slots
    return {
        "case": "drain", "target": target, "forwarders": forwarders,
        "backend": backend, "concurrency": concurrency, "total": total,
        "delivered": delivered, "finished": done_at is not None,
        "makespan": makespan, "ideal": ideal, "ideal_c": ideal_c,
        "ratio": makespan / ideal if makespan else float("nan"),
        "ratio_c": makespan / ideal_c if makespan else float("nan"),
        "spawn_to_done": (done_at or time.monotonic()) - t_spawn,
        "fwd_cpu_s": fwd_cpu, "fake_cpu_s": fake_cpu, "stop_s": stop_s,
        "load_max": max(loads, default=os.getloadavg()[0]),
        "load_mean": statistics.fmean(loads) if loads else os.getloadavg()[0],
        "samples": samples, "limits": limits, "outcomes": outcomes, "doc_statuses": statuses,
        "fake": fake_stats, "fwd": fwd_stats,
        "logs": (fake.stdout_path, fwd.stdout_path),
    }


def parse_fake_log(path: Path, args) -> dict:
    """What the fake saw, from its one line per request."""
    reqs = []
    for m in FAKE_RECORD.finditer(path.read_text(errors="replace")):
        if m["method"] == "PATCH":
            reqs.append({"status": int(m["status"]), "kind": m["kind"], "doc": m["doc"],
                         "tok": m["tail"], "rx": float(m["received"]),
                         "tx": float(m["answered"])})
    if not reqs:
        return {"requests": 0, "statuses": {}, "ok": 0, "twice": 0, "makespan": 0.0,
                "per_token": {}, "t0": 0.0}
    t0 = min(r["rx"] for r in reqs)
    ok = [r for r in reqs if r["status"] == 200]
    docs = Counter((r["kind"], r["doc"]) for r in ok)
    per_token: dict[str, dict] = {}
    by_tok = defaultdict(list)
    for r in sorted(reqs, key=lambda r: r["rx"]):
        by_tok[r["tok"]].append(r)
    m = args.rate_max
    interval = args.interval_ms / 1000
    for tok, rs in by_tok.items():
        oks = [r for r in rs if r["status"] == 200]
        # The fake's own windows: one starts at the first request at least an interval
        # after the current one started.
        windows: list[list[float]] = []  # [start, answered 200, requests]
        late = 0.0  # after a full window: its end to the location's next PATCH
        idle = 0.0  # in a window not full: silent for over 2 s
        for prev, r in zip([None, *rs], rs, strict=False):
            if prev is not None and r["rx"] - prev["rx"] > 2.0:  # beyond a batch cycle
                start, sent = windows[-1][0], windows[-1][1]
                if sent >= m:
                    late += max(0.0, r["rx"] - (start + interval))
                else:
                    idle += r["rx"] - prev["rx"]
            if not windows or r["rx"] - windows[-1][0] >= interval:
                windows.append([r["rx"], 0, 0])
            windows[-1][1] += r["status"] == 200
            windows[-1][2] += 1
        first = oks[0]["rx"] - t0 if oks else None
        nth = oks[m - 1]["rx"] - t0 if len(oks) >= m else None  # last of the first window
        nxt = oks[m]["rx"] - t0 if len(oks) > m else None  # first of the second window
        per_token[tok] = {
            "first": first, "mth": nth, "next": nxt,
            "gap": (nxt - first) if nxt is not None and first is not None else None,
            "last": oks[-1]["tx"] - t0 if oks else None,
            "429": [r["rx"] - t0 for r in rs if r["status"] == 429],
            "windows": [(w[0] - t0, int(w[1])) for w in windows],
            "idle": idle, "late": late,
        }
    return {
        "requests": len(reqs),
        "statuses": dict(Counter(r["status"] for r in reqs)),
        "ok": len(ok), "distinct": len(docs),
        "twice": sum(1 for n in docs.values() if n > 1),
        "makespan": (max(r["tx"] for r in ok) - t0) if ok else 0.0,
        "per_token": per_token, "t0": t0,
    }


def parse_forwarder_log(*paths: Path) -> dict:
    """The forwarders' own account: attempts by outcome, rate-limited lines, errors."""
    outcomes: Counter = Counter()
    limited: list[dict] = []
    problems: Counter = Counter()
    lines = [line for path in paths for line in path.read_text(errors="replace").splitlines()]
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") == "delivery.attempt":
            outcomes[rec.get("outcome")] += 1
            if rec.get("outcome") == "rate_limited":
                limited.append(rec)
        elif rec.get("level") in ("warning", "error", "critical"):
            problems[rec.get("event")] += 1
    return {"outcomes": dict(outcomes), "rate_limited": limited, "problems": dict(problems)}


# -- reporting --------------------------------------------------------------------------

def _fmt(x, spec=".1f") -> str:
    return "-" if x is None else format(x, spec)


def diagnose(r: dict, args) -> list[str]:
    """Where the time went, and where any 429 came from, in plain words."""
    out = []
    pt = r["fake"]["per_token"]
    gaps = sorted(v["gap"] for v in pt.values() if v["gap"] is not None)
    firsts = sorted(v["first"] for v in pt.values() if v["first"] is not None)
    mths = sorted(v["mth"] for v in pt.values() if v["mth"] is not None)
    lasts = sorted(v["last"] for v in pt.values() if v["last"] is not None)
    interval = args.interval_ms / 1000
    where = f"{r['backend']} {r['target']} f={r['forwarders']} c={r['concurrency']}"
    if gaps:
        out.append(
            f"{where}: per location, first PATCH at {_fmt(firsts[0], '.2f')}-"
            f"{_fmt(firsts[-1], '.2f')} s, {args.rate_max}th at {_fmt(mths[0], '.2f')}-"
            f"{_fmt(mths[-1], '.2f')} s, send no. {args.rate_max + 1} started "
            f"{_fmt(gaps[0], '.2f')}-{_fmt(gaps[-1], '.2f')} s (median "
            f"{_fmt(statistics.median(gaps), '.2f')}) after the location's first "
            f"(if the first {args.rate_max} fit in one window, the limit allows {interval:g} s), "
            f"last answered {_fmt(lasts[0], '.2f')}-"
            f"{_fmt(lasts[-1], '.2f')} s (times from the fake's first PATCH).")
    if pt:
        idles = sorted(v["idle"] for v in pt.values())
        lates = sorted(v["late"] for v in pt.values())
        full = sum(n >= args.rate_max for v in pt.values() for _, n in v["windows"])
        count = sum(len(v["windows"]) for v in pt.values())
        tok = sorted(pt)[0]
        example = " + ".join(f"{n} (from {t:.1f} s)" for t, n in pt[tok]["windows"])
        out.append(
            f"{where}: the fake's windows: {count} over {len(pt)} locations, {full} of them "
            f"full ({args.rate_max}); e.g. location {tok}: {example}. Late after a full "
            f"window (its end to the location's next PATCH): median "
            f"{statistics.median(lates):.2f} s, max {lates[-1]:.2f} s per location. Silent "
            f"for over 2 s in a window that was not full (the fake would have accepted): "
            f"median {statistics.median(idles):.1f} s, max {idles[-1]:.1f} s.")
    n429 = r["fake"]["statuses"].get(429, 0)
    if n429:
        hit = {tok: v["429"] for tok, v in pt.items() if v["429"]}
        sample = ", ".join(f"loc {tok}: {len(ts)} at {ts[0]:.2f}-{ts[-1]:.2f} s"
                           for tok, ts in sorted(hit.items())[:6])
        out.append(f"{where}: {n429} answers 429 on {len(hit)} locations ({sample}).")
    pauses = Counter(reason for s in r["samples"] for _, reason in s["paused"])
    if pauses:
        paused_s = sum(pauses.values()) * 0.5 / max(1, len(pt))
        out.append(f"{where}: the rate_limits table showed locations paused (sampled every "
                   f"0.5 s; by reason {dict(pauses)}): about {paused_s:.1f} s per location.")
    return out


def report(args, rows: list, notes: list, facts: list, started: dt.datetime,
           load_end: tuple) -> str:
    headers = ["store", "forwarder", "processes", "FORWARD_CONCURRENCY", "delivered",
               "makespan s", "ideal s",
               "ratio", "ideal at this C s", "ratio vs C", "429s", "sends/s",
               "forwarder CPU s", "fake CPU s", "sent twice", "spawn to done s",
               "load avg (mean / max)"]
    table = [[r["backend"], r["target"], r["forwarders"], r["concurrency"],
              f"{r['delivered']}/{r['total']}" + ("" if r["finished"] else " (timed out)"),
              f"{r['makespan']:.2f}", f"{r['ideal']:.2f}", f"{r['ratio']:.2f}",
              f"{r['ideal_c']:.2f}", f"{r['ratio_c']:.2f}",
              r["fake"]["statuses"].get(429, 0),
              f"{r['fake']['ok'] / r['makespan']:.0f}" if r["makespan"] else "-",
              f"{r['fwd_cpu_s']:.1f}", f"{r['fake_cpu_s']:.1f}", r["fake"]["twice"],
              f"{r['spawn_to_done']:.1f}",
              f"{r['load_mean']:.1f} / {r['load_max']:.1f}"]
             for r in rows if r["case"] == "drain"]
    windows = math.ceil(args.per_location / args.rate_max)
    diag = [line for r in rows if r["case"] == "drain" for line in diagnose(r, args)]
    lines = [
        "# Rate-limit benchmark (`flask --app service forwarder` against 100 / 10 s per "
        "location)",
        "",
        f"Run {started:%Y-%m-%d %H:%M} UTC with:",
        "",
        f"    {command_line()}",
        "",
        markdown_table(headers, table),
        "",
        f"- makespan: the fake HighLevel's first PATCH received to its last 200 answered "
        f"({args.locations} x {args.per_location} = {args.locations * args.per_location} "
        "documents; forwarder start-up excluded).",
        f"- ideal: (ceil(D / M) - 1) x I + L = ({windows} - 1) x {args.interval_ms / 1000:g} "
        f"+ {args.latency:g} = {ideal_seconds(args):.2f} s with D = {args.per_location} "
        f"documents per location, M = {args.rate_max} per window of I = "
        f"{args.interval_ms / 1000:g} s, L = {args.latency:g} s: the first {args.rate_max} "
        f"of every location at t = 0, the rest when the next window opens. ratio = "
        "makespan / ideal (the issue's figure; 1.0 is perfect).",
        "- ideal at this C: the same bound with only C sends in flight (C = "
        "FORWARD_CONCURRENCY x forwarder processes): "
        "max((ceil(D/M) - 1) x I + ceil(N x r / C) x L, ceil(N x D / C) x L), N locations, "
        "r = sends left for the last window. Even a perfect limiter cannot beat it: after "
        f"t = {(windows - 1) * args.interval_ms / 1000:g} s, {args.locations} x "
        f"{args.per_location - (windows - 1) * args.rate_max} sends are left and C slots "
        "finish C of them every L.",
        "- 429s: lines with status 429 in the fake's output (one line per request); the "
        "target is 0.",
        "- sends/s: PATCHes answered 200 / makespan.",
        "- forwarder CPU s: user + system CPU seconds of the forwarder process, spawn to done.",
        "- fake CPU s: the same for the fake HighLevel, from the forwarders' spawn to done: it "
        "shares the machine's cores with the forwarders (HighLevel itself would not).",
        "- sent twice: documents the fake answered 200 for more than once (at-least-once "
        "duplicates); a 429 followed by a successful retry is not counted.",
        "- spawn to done: forwarder process start to every document delivered in the store "
        "(includes Python start-up).",
        "- load avg: the 1-minute load average sampled during the run.",
        "",
        "## Set-up",
        "",
        f"- {args.locations} locations, each with its own token stored by the service's "
        f"`TokenVault`; {args.per_location} distinct documents per location (every tenth an "
        "estimate), one view each, recorded by `Store.record_views`, all due at once.",
        f"- fake HighLevel: `python -m tests.fake_highlevel --latency {args.latency:g} "
        f"--server {args.fake_server}` in its own process, enforcing {args.rate_max} "
        f"requests per {args.interval_ms} ms per token "
        "(429 beyond; the window starts at a token's first request and the next one at its "
        f"first request after that); OpenAPI validation "
        f"{'on' if args.validate_openapi else 'off (`--no-openapi`)'}.",
        "- forwarder: one `flask --app service forwarder` process, RELAY_ENV=production, "
        "the service's default RATE_LIMIT_BURST (100/10s) and RATE_LIMIT_DAILY, corrected "
        "from the fake's `X-RateLimit-*` headers; logs in `bench/out/`.",
        "- stores: a new SQLite file under `bench/out/`, or a new PostgreSQL database "
        "(dropped afterwards).",
        "",
        "## Machine",
        "",
        facts_block(facts),
        f"- load average at end: {' '.join(f'{x:.2f}' for x in load_end)}",
    ]
    if diag:
        lines += ["", "## Where the time went", ""] + [f"- {d}" for d in diag]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def describe(r: dict) -> str:
    if r["case"] == "outage":
        return describe_outage(r)
    return (f"[{r['backend']} {r['target']} x{r['forwarders']}] c={r['concurrency']}: "
            f"makespan {r['makespan']:.2f} s, ideal "
            f"{r['ideal']:.2f} s (ratio {r['ratio']:.2f}; {r['ideal_c']:.2f} s at this "
            f"concurrency, ratio {r['ratio_c']:.2f}), 429s "
            f"{r['fake']['statuses'].get(429, 0)}, delivered "
            f"{r['delivered']}/{r['total']}, sent twice {r['fake']['twice']}, "
            f"logs {', '.join(str(p.relative_to(ROOT)) for p in r['logs'])}")


def check(r: dict, args) -> list[str]:
    if r["case"] == "outage":
        return check_outage(r)
    where = f"{r['backend']} {r['target']} f={r['forwarders']} c={r['concurrency']}"
    notes = []
    if not r["finished"]:
        notes.append(f"{where}: timed out after {args.timeout:g} s with "
                     f"{r['delivered']}/{r['total']} delivered")
    notes.append(f"{where}: fake statuses {r['fake']['statuses']}; forwarder "
                 f"attempts by outcome {r['fwd']['outcomes']}; delivery_log "
                 f"{r['outcomes']}; documents {r['doc_statuses']}")
    if r["fwd"]["problems"]:
        notes.append(f"{where}: forwarder warnings/errors {r['fwd']['problems']}")
    if r["fake"]["twice"]:
        notes.append(f"{where}: {r['fake']['twice']} documents were delivered twice")
    return notes


def main(argv=None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(UTC)
    notes: list[str] = []
    backends, facts = usable_backends(args.backends, args.pg_url, notes)
    keys = bench_secrets()

    def case(backend: str, inner: tuple, _round: int) -> dict:
        kind, target, forwarders, concurrency = inner
        if kind == "outage":
            print(f"[{backend} {target}] outage: {args.outage_views} views of "
                  f"{args.outage_locations} locations during {args.outage:g} s ...", flush=True)
            return run_outage(args, backend, keys, target=target,
                              command=forwarder_command(args, target))
        print(f"[{backend} {target} x{forwarders}] FORWARD_CONCURRENCY={concurrency}: "
              f"{args.locations} x {args.per_location} documents, {args.rate_max} per "
              f"{args.interval_ms} ms per location, latency {args.latency:g} s ...",
              flush=True)
        return run_one(args, backend, concurrency, keys, target=target, forwarders=forwarders)

    # Targets interleaved within each case, so the baseline and this checkout meet the
    # same machine load side by side.
    inner = [("drain", t, f, c) for f in args.forwarders for c in args.concurrency
             for t in args.targets if "drain" in args.cases]
    inner += [("outage", t, 1, 0) for t in args.targets if "outage" in args.cases]
    rows = run_matrix(backends, case, inner=inner, notes=notes,
                      describe=describe, check=lambda r: check(r, args), keep_going=False)
    text = report(args, rows, notes, facts, started, os.getloadavg())
    text += outage_report(args, [r for r in rows if r["case"] == "outage"])
    write_report(text, args.output)
    ok = rows and all(outage_ok(r) if r["case"] == "outage" else (
        r["finished"] and not r["fake"]["twice"] and not r["fake"]["statuses"].get(429))
        for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
