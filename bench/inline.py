"""Relay vs the simplest alternative: a Flask handler that calls HighLevel inline.

The alternative is ``bench/inline_app.py`` (``POST /v1/events`` PATCHes HighLevel with
``requests`` before answering: 200, or 502 when HighLevel did not say 2xx). The relay is
the service as the Procfile runs it: gunicorn (``service:create_app()``) and one
``flask --app service forwarder``, on a fresh SQLite file (``--backend``). Both run under
``gunicorn --config config/gunicorn.conf.py`` with the same WEB_CONCURRENCY x
GUNICORN_THREADS, and talk to the fake HighLevel (``tests/fake_highlevel.py`` in its own
process, a new one per case) answering each PATCH after ``--latency`` (0.15) s and
enforcing HighLevel's 100 requests / 10 s per token. ``--locations`` locations, each with
its own token (the inline app's ``INLINE_TOKENS``; the relay's admin API).

Part 1, ``throughput``: wrk (closed loop, ``--connections``) sends one event per
``POST /v1/events`` (bench/compare.py's Lua script: a new eventId and invoiceId each)
for ``--warmup`` + ``--duration`` s. Accepted events/s and p50/p99. Inline: accepted = 200s;
the fake's count of 200 PATCHes in the same window is the check. Relay: accepted = rows
added to the store (checked against the 202s); then the time the forwarder takes to deliver
the backlog, counted in the store and at the fake (each event is its own document, so one
PATCH each).

Part 2, ``outage``: an open-loop steady ``--rate`` events/s (``common.PacedLoad``) for
``--before`` s, then HighLevel down for ``--outage`` s (``--outage-mode``: ``503`` answers
503 to every PATCH, ``refused`` stops the fake: nothing listens), then up for ``--after``
s. Per phase: events sent, accepted, failed, and whether HighLevel got each one (the
fake's record of 200 PATCHes by document, not the client's count). The relay's
delivered-after-recovery and time to drain: from HighLevel's return until every accepted
event is delivered (polled in the store, bounded by ``--drain-timeout``).

    .venv/bin/python bench/inline.py                        # ~4-6 min
    .venv/bin/python bench/inline.py --duration 4 --warmup 1 --before 3 --outage 6 \\
        --after 3 --output bench/out/inline.md               # a quick check of the script

Results: stdout, ``--output`` (``bench/results-inline.md``) and a chart beside it
(``.png``). Everything on 127.0.0.1; every wait is bounded; every process is stopped.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import secrets
import sys
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402 - after the path set-up, so `python bench/inline.py` works
    OUT,
    FakeHighLevelProcess,
    PacedLoad,
    bench_secrets,
    facts_for,
    fresh_store,
    machine_section,
    markdown_table,
    per_second,
    percentile,
    pyplot,
    relative_to,
    relay_processes,
    report_head,
    run_matrix,
    store_options,
    wait_delivered,
    web_server,
    write_report,
)
from compare import INGEST_LUA, measure  # noqa: E402
from pixel import _csv  # noqa: E402

INLINE_APP = "bench.inline_app:create_app()"
DEFAULTS = {"duration": 15, "outage": 30}
APPS = {"inline": "inline Flask handler", "relay": "relay (web + forwarder)"}


def parse_args(argv=None) -> argparse.Namespace:
    cpus = os.cpu_count() or 1
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--parts", type=_csv, default=["throughput", "outage"],
                   help="throughput, outage")
    p.add_argument("--apps", type=_csv, default=["inline", "relay"], help="inline, relay")
    p.add_argument("--latency", type=float, default=0.15,
                   help="seconds the fake HighLevel takes to answer each PATCH")
    p.add_argument("--workers", type=int, default=2 * cpus, help="WEB_CONCURRENCY")
    p.add_argument("--threads", type=int, default=16, help="GUNICORN_THREADS (the shipped default)")
    p.add_argument("--forward-concurrency", type=int, default=16,
                   help="FORWARD_CONCURRENCY of the relay's forwarder (the service default)")
    p.add_argument("--locations", type=int, default=100, help="locations, one token each")
    p.add_argument("--duration", type=int, default=DEFAULTS["duration"],
                   help="throughput: measured seconds of wrk")
    p.add_argument("--warmup", type=int, default=2, help="throughput: seconds of warm-up")
    p.add_argument("--connections", type=int, default=32, help="throughput: wrk -c")
    p.add_argument("--wrk-threads", type=int, default=2, help="throughput: wrk -t")
    p.add_argument("--timeout", type=int, default=10,
                   help="seconds before a client gives up on a request")
    p.add_argument("--rate", type=float, default=50.0, help="outage: events per second")
    p.add_argument("--before", type=float, default=10.0, help="outage: seconds up first")
    p.add_argument("--outage", type=float, default=DEFAULTS["outage"],
                   help="outage: seconds HighLevel is down")
    p.add_argument("--after", type=float, default=20.0, help="outage: seconds up after")
    p.add_argument("--outage-mode", choices=["503", "refused"], default="503",
                   help="503: every PATCH answered 503; refused: nothing listening")
    p.add_argument("--drain-timeout", type=float, default=600.0,
                   help="longest wait for the relay to deliver its backlog")
    p.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite",
                   help="the relay's store")
    store_options(p, "results-inline.md", "the report; the chart goes beside it with .png")
    args = p.parse_args(argv)
    if not set(args.parts) <= {"throughput", "outage"} or not set(args.apps) <= set(APPS):
        p.error("--parts: throughput, outage; --apps: inline, relay")
    return args


def tokens_for(args) -> dict[str, str]:
    return {f"loc-{i:03d}": f"bench-token-loc-{i:03d}" for i in range(args.locations)}


@contextmanager
def running(args, app: str, keys: dict, label: str):
    """A fresh fake HighLevel and the app (inline, or relay on a fresh store) against it."""
    with FakeHighLevelProcess(latency=args.latency) as fake:
        if app == "inline":
            with web_server(f"{label}-gunicorn", None, keys, workers=args.workers,
                            threads=args.threads, app=INLINE_APP,
                            HIGHLEVEL_BASE_URL=fake.url,
                            INLINE_TOKENS=json.dumps(tokens_for(args))) as server:
                yield SimpleNamespace(fake=fake, port=server.port, web=server.web,
                                      forwarder=None, store=None)
        else:
            with fresh_store(args.backend, "inline", pg_url=args.pg_url,
                             keep=args.keep) as store, \
                    relay_processes(store, keys, label=label, highlevel_url=fake.url,
                                    workers=args.workers, threads=args.threads,
                                    tokens=tokens_for(args),
                                    FORWARD_CONCURRENCY=args.forward_concurrency) as relay:
                yield SimpleNamespace(fake=fake, port=relay.port, web=relay.web,
                                      forwarder=relay.forwarder, store=store)


def delivered_docs(patches: list[tuple]) -> dict[str, float]:
    """Each document HighLevel answered 200 for, and when it first received it."""
    first: dict[str, float] = {}
    for at, status, _kind, doc in patches:
        if status == 200 and doc is not None and (doc not in first or at < first[doc]):
            first[doc] = at
    return first


# -- part 1: throughput ---------------------------------------------------------------------

def throughput(args, app: str, keys: dict) -> dict:
    label = f"inline-throughput-{app}"
    files = {"key": keys["INGEST_API_KEYS"], "ingest_lua": OUT / "inline-ingest.lua",
             "ingest_settings": OUT / f"{label}-settings.txt",
             "locations": list(tokens_for(args))}
    files["ingest_lua"].write_text(INGEST_LUA)
    with running(args, app, keys, label) as env:
        alive = env.forwarder.running if env.forwarder else (lambda: True)

        def drain_warmup() -> None:  # the measured run starts with no backlog
            if env.store is not None:
                wait_delivered(env.store, timeout=args.drain_timeout, alive=alive)

        r = measure(args, "ingest", env.port, env.web, env.store, files,
                    after_warmup=drain_warmup)
        ended = r["started"] + r["seconds"]
        r.update(part="throughput", app=app, ended=ended)
        if env.store is not None:
            counts, drained_at = wait_delivered(env.store, timeout=args.drain_timeout,
                                                alive=alive)
            r.update(counts=counts, drained=drained_at is not None,
                     drain_s=(drained_at or time.monotonic()) - ended)
        patches = env.fake.patches()
    ok = [p for p in patches if p[1] == 200 and p[0] >= r["started"]]
    r["hl_ok_in_run"] = sum(1 for p in ok if p[0] <= ended)
    r["hl_ok_total"] = len(ok)
    r["hl_statuses"] = dict(Counter(p[1] for p in patches if p[0] >= r["started"]))
    r["hl_extra"] = len(ok) - len({p[3] for p in ok})
    r["hl_rate_in_run"] = r["hl_ok_in_run"] / r["seconds"]
    r["violations"] = env.fake.violations
    return r


# -- part 2: outage -------------------------------------------------------------------------

def outage(args, app: str, keys: dict) -> dict:
    label = f"inline-outage-{app}"
    nonce = secrets.token_hex(4)
    locations = list(tokens_for(args))
    headers = {"Authorization": f"Bearer {keys['INGEST_API_KEYS']}",
               "Content-Type": "application/json"}

    def make_request(i: int) -> tuple:
        body = json.dumps({"locationId": locations[i % len(locations)],
                           "invoiceId": f"inv-{nonce}-{i}", "eventId": f"ev-{nonce}-{i}",
                           "source": "bench"}).encode()
        return "event", "POST", "/v1/events", body, headers

    total = args.before + args.outage + args.after
    with running(args, app, keys, label) as env:
        load = PacedLoad(env.port, make_request, rate=args.rate, duration=total,
                         connections=max(16, int(args.rate * (args.latency + 0.5))),
                         timeout=args.timeout).start()
        time.sleep(max(0.0, load.start_at + args.before - time.monotonic()))
        t_down = time.monotonic()
        env.fake.refuse() if args.outage_mode == "refused" else env.fake.set_down(True)
        time.sleep(max(0.0, load.start_at + args.before + args.outage - time.monotonic()))
        # up once it answers again (a new fake process takes a moment to listen)
        env.fake.listen() if args.outage_mode == "refused" else env.fake.set_down(False)
        t_up = time.monotonic()
        results = load.join()
        t_end = time.monotonic()
        r = {"part": "outage", "app": app, "start": load.start_at, "t_down": t_down, "t_up": t_up,
             "t_end": t_end, "results": results}
        if env.store is not None:
            alive = env.forwarder.running
            counts, drained_at = wait_delivered(env.store, timeout=args.drain_timeout,
                                                alive=alive)
            r.update(counts=counts, drained_at=drained_at)
            if not alive():
                r["note"] = f"forwarder exited early:\n{env.forwarder.tail()}"
        patches = env.fake.patches()
        r["violations"] = env.fake.violations
    first_ok = delivered_docs(patches)
    r["first_ok"] = first_ok
    r["hl_statuses"] = dict(Counter(p[1] for p in patches))
    r["app_statuses"] = dict(Counter(x[3] for x in results))  # 0: no answer, -1: not sent
    r["phases"] = {}
    for phase, lo, hi in (("before", 0.0, t_down), ("down", t_down, t_up),
                          ("after", t_up, float("inf"))):
        rows = [x for x in results if lo <= x[1] < hi]
        accepted = [x for x in rows if 200 <= x[3] < 300]
        reached = [x for x in rows if f"inv-{nonce}-{x[4]}" in first_ok]
        lat = sorted((x[2] - x[1]) * 1000 for x in rows if x[3] > 0)
        r["phases"][phase] = {
            "sent": len(rows), "accepted": len(accepted),
            "failed": sum(1 for x in rows if not 200 <= x[3] < 300),
            "no_answer": sum(1 for x in rows if x[3] <= 0),
            "reached": len(reached),
            "accepted_not_reached": sum(1 for x in accepted
                                        if f"inv-{nonce}-{x[4]}" not in first_ok),
            "p50": percentile(lat, 50), "p99": percentile(lat, 99),
        }
    accepted_docs = [f"inv-{nonce}-{x[4]}" for x in results if 200 <= x[3] < 300]
    r["sent"] = len(results)
    r["accepted"] = len(accepted_docs)
    r["reached"] = sum(1 for x in results if f"inv-{nonce}-{x[4]}" in first_ok)
    r["lost"] = r["sent"] - r["reached"]
    # sent before HighLevel came back (due < t_up), accepted, and first answered 200 after
    r["after_recovery"] = sum(1 for x in results if x[1] < t_up and 200 <= x[3] < 300
                              and first_ok.get(f"inv-{nonce}-{x[4]}", 0) >= t_up)
    reached_times = [first_ok[d] for d in accepted_docs if d in first_ok]
    r["last_delivery_after_up"] = (max(reached_times) - t_up) if reached_times else None
    if "drained_at" in r:
        r["drain_s"] = (r["drained_at"] - t_up) if r["drained_at"] else None
    return r


# -- report ---------------------------------------------------------------------------------

def draw(args, tp: list[dict], out: list[dict], path: Path) -> None:
    """Top: accepted vs reached-HighLevel rates and latency; bottom: each app's outage."""
    plt = pyplot()
    colours = {"inline": "#d62728", "relay": "#1f77b4"}
    rows = (1 if tp else 0) + (1 if out else 0)
    fig = plt.figure(figsize=(13, 4.8 * rows))
    grid = fig.add_gridspec(rows, 2)
    if tp:
        names = [APPS[r["app"]] for r in tp]
        xs = list(range(len(tp)))
        ax = fig.add_subplot(grid[0, 0])
        for x, r in zip(xs, tp, strict=True):
            c = colours[r["app"]]
            ax.bar(x - 0.2, r["rps"], 0.4, color=c)
            ax.bar(x + 0.2, r["hl_rate_in_run"], 0.4, color=c, alpha=0.4)
            ax.annotate(f"accepted\n{r['rps']:,.0f}/s", (x - 0.2, r["rps"]), ha="center",
                        va="bottom", fontsize=8)
            note = (f"\nbacklog done\n{r['drain_s']:.0f} s after" if "drain_s" in r else "")
            ax.annotate(f"HighLevel got\n{r['hl_rate_in_run']:,.0f}/s{note}",
                        (x + 0.2, r["hl_rate_in_run"]), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(xs, names)
        ax.set_ylabel("events per second (during the run)")
        ax.set_title(f"Throughput: wrk -c{args.connections}, HighLevel at "
                     f"{args.latency * 1000:.0f} ms", fontsize=10)
        ax.margins(y=0.35)
        ax.grid(axis="y", alpha=0.3)
        ax = fig.add_subplot(grid[0, 1])
        for x, r in zip(xs, tp, strict=True):
            c = colours[r["app"]]
            ax.bar(x, r["p99"], 0.5, color=c, alpha=0.35)
            ax.bar(x, r["p50"], 0.5, color=c)
            ax.annotate(f"p99 {r['p99']:,.0f}", (x, r["p99"]), ha="center", va="bottom",
                        fontsize=8)
            ax.annotate(f"p50 {r['p50']:,.0f}", (x, r["p50"]), ha="center", va="top",
                        fontsize=8, color="white")
        ax.set_xticks(xs, names)
        ax.set_yscale("log")
        ax.set_ylabel("latency, ms (log scale)")
        ax.set_title("Latency under that load: p50 (solid), p99 (light)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    for k, r in enumerate(out[:2]):
        ax = fig.add_subplot(grid[rows - 1, k])
        origin = r["start"]
        horizon = max(r["t_end"], r.get("drained_at") or 0,
                      max(r["first_ok"].values(), default=0)) - origin + 2
        res = r["results"]
        secs = range(max(1, int(horizon) + 1))
        ax.axvspan(r["t_down"] - origin, r["t_up"] - origin, color="grey", alpha=0.2,
                   label=f"HighLevel down ({args.outage_mode})")
        ax.plot(secs, per_second([x[2] for x in res if 200 <= x[3] < 300], origin, horizon),
                color=colours[r["app"]], label="accepted by the app (2xx) /s")
        ax.plot(secs, per_second([x[2] for x in res if not 200 <= x[3] < 300], origin,
                                 horizon), color="black", linestyle=":",
                label="refused by the app (non-2xx) /s")
        ax.plot(secs, per_second(list(r["first_ok"].values()), origin, horizon),
                color="#2ca02c", alpha=0.8, label="reached HighLevel (200) /s")
        if r.get("drained_at"):
            ax.axvline(r["drained_at"] - origin, color="#2ca02c", linestyle="--",
                       label=f"all delivered ({r['drain_s']:.0f} s after recovery)")
        ax.set_title(f"HighLevel down: {APPS[r['app']]}\nsent {r['sent']:,}, accepted "
                     f"{r['accepted']:,}, lost {r['lost']:,}", fontsize=10)
        ax.set_xlabel("seconds since the load started")
        ax.set_ylabel("events per second")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"Relay vs an inline HighLevel call, fake HighLevel at "
                 f"{args.latency * 1000:.0f} ms ({os.cpu_count()} CPUs, gunicorn "
                 f"{args.workers}x{args.threads})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(args, tp: list[dict], out: list[dict], notes: list[str], facts: list,
           started: dt.datetime, chart: Path) -> str:
    short = (("throughput" in args.parts and args.duration < DEFAULTS["duration"])
             or ("outage" in args.parts and args.outage < DEFAULTS["outage"]))
    lines = [
        *report_head("Relay vs an inline HighLevel call", started=started, short=short),
        f"![relay vs inline]({relative_to(chart, args.output)})",
        "",
    ]
    if tp:
        headers = ["app", "accepted events/s", "p50 ms", "p99 ms", "max ms", "non-2xx",
                   "socket errors / timeouts", "HighLevel 200s during the run (/s)",
                   "check", "backlog delivered after the load (s)", "extra PATCHes"]
        table = []
        for r in tp:
            if r["app"] == "relay":
                check = (f"{'OK' if r['stored_ok'] else 'MISMATCH'}: {r['stored']:,} rows "
                         f"stored for {r['ok']:,} 202s")
                drain = (f"{r['drain_s']:.1f}" if r["drained"] else
                         f"not all after {r['drain_s']:.0f} s "
                         f"({r['counts']['delivered']:,} / {r['counts']['forward']:,})")
            else:
                check = (f"{r['hl_ok_in_run']:,} HighLevel 200s for {r['ok']:,} answered "
                         "200 (requests in flight at either edge of the run make them "
                         "differ by up to 2 x connections)")
                drain = "n/a (nothing queued)"
            table.append([APPS[r["app"]], f"{r['rps']:,.1f}", f"{r['p50']:.1f}",
                          f"{r['p99']:.1f}", f"{r['max']:.0f}", r["non2xx"],
                          f"{r['sock_errors']} / {r['timeouts']}",
                          f"{r['hl_ok_in_run']:,} ({r['hl_rate_in_run']:,.1f})", check, drain,
                          r["hl_extra"]])
        lines += [
            "## Throughput: accepted events per second",
            "",
            markdown_table(headers, table),
            "",
            f"wrk -t{args.wrk_threads} -c{args.connections} -d{args.duration}s --timeout "
            f"{args.timeout}s, after {args.warmup} s of warm-up (the relay's warm-up backlog "
            "delivered before the measured run): one event per `POST /v1/events`, a new "
            "eventId and invoiceId each. accepted: the inline app's 200s (each one a PATCH "
            "HighLevel answered 200; the fake's count is the check), the relay's 202s (each a "
            "committed view; the store's row count is the check). HighLevel 200s during the "
            "run: PATCHes the fake answered 200 between the start and the end of the "
            "measured run. backlog delivered: from the end of the run until every stored "
            "event is delivered, polled in the store (`seq <= sent_seq`). extra PATCHes: "
            "200 PATCHes beyond one per document.",
            "",
        ]
    if out:
        headers = ["app", "phase", "sent", "accepted (2xx)", "failed", "no answer",
                   "reached HighLevel", "accepted but not reached", "p50 ms", "p99 ms"]
        table = [[APPS[r["app"]], phase, p["sent"], p["accepted"], p["failed"],
                  p["no_answer"], p["reached"], p["accepted_not_reached"], f"{p['p50']:.0f}",
                  f"{p['p99']:.0f}"]
                 for r in out for phase, p in r["phases"].items()]
        measured_down = [r["t_up"] - r["t_down"] for r in out]
        summary = [["app", "sent", "accepted", "lost (never reached HighLevel)",
                    "delivered after recovery", "time to drain after recovery (s)"]]
        for r in out:
            if r["app"] == "relay":
                drain = (f"{r['drain_s']:.1f}" if r.get("drain_s") is not None else
                         f"not drained in {args.drain_timeout:.0f} s "
                         f"({r['counts']['delivered']:,} / {r['counts']['forward']:,})")
            else:
                drain = "n/a (nothing kept)"
            summary.append([APPS[r["app"]], f"{r['sent']:,}", f"{r['accepted']:,}",
                            f"{r['lost']:,}", f"{r['after_recovery']:,}", drain])
        lines += [
            "## HighLevel down",
            "",
            markdown_table(summary[0], summary[1:]),
            "",
            markdown_table(headers, table),
            "",
            f"{args.rate:g} events/s, open loop (each request due at its time whether "
            f"earlier ones were answered or not; latency counted from when it was due), "
            f"HighLevel up for {args.before:g} s, down for {args.outage:g} s (measured: "
            f"{', '.join(f'{x:.1f} s' for x in measured_down)}) "
            f"({'every PATCH answered 503 after the usual latency' if args.outage_mode == '503' else 'the fake stopped: connections refused'}), "  # noqa: E501
            f"then up for {args.after:g} s. phase: by when the request was due. reached "
            "HighLevel: the fake answered 200 to a PATCH for that event's invoice (each "
            "event has its own), at any time up to the end. lost: sent but never reached "
            "HighLevel (the inline app has no copy to retry from; its client would have to "
            "retry). delivered after recovery: events sent before HighLevel was back, "
            "accepted, and answered 200 by HighLevel only after it was back. time to "
            "drain: from HighLevel's return until the store shows every accepted event "
            "delivered (the forwarder's retries back off exponentially with full jitter, "
            "base 2 s: how long depends on how many attempts failed during the outage).",
            "",
        ]
        for r in out:
            statuses = ", ".join(f"{k}: {v:,}" for k, v in sorted(r["hl_statuses"].items()))
            answers = ", ".join(f"{k}: {v:,}" for k, v in sorted(r["app_statuses"].items()))
            lines.append(f"- {APPS[r['app']]}: answers by status: {answers}; PATCHes at the "
                         f"fake by status: {statuses}.")
        lines.append("")
    lines += [
        "## Set-up",
        "",
        f"- Both apps: `gunicorn --config config/gunicorn.conf.py`, WEB_CONCURRENCY="
        f"{args.workers}, GUNICORN_THREADS={args.threads}, RELAY_ENV=production, "
        f"access log on; {args.locations} locations, each with its own token.",
        f"- inline: `{INLINE_APP}` (bench/inline_app.py): checks the ingest key, PATCHes "
        "HighLevel with a pooled `requests.Session` (timeout 5 s connect, 10 s read), answers "
        "200 or 502.",
        f"- relay: `service:create_app()` on a fresh {args.backend} store, tokens stored "
        "with `PUT /v1/locations/<id>/token`, one `flask --app service forwarder` with "
        f"FORWARD_CONCURRENCY={args.forward_concurrency} and the service's default rate "
        "limits (100 / 10 s per location, learned from the fake's headers).",
        f"- fake HighLevel: `tests.fake_highlevel.FakeHighLevel` in its own process, "
        f"{args.latency:g} s per answer, 100 requests / 10 s per token enforced (429 "
        "beyond), OpenAPI validation off (its CPU would be charged to the machine both "
        "apps share); a new one per case.",
        "",
        *machine_section(facts, notes),
    ]
    return "\n".join(lines) + "\n"


def describe(r: dict) -> str:
    if r["part"] == "throughput":
        return (f"  accepted {r['rps']:,.1f} events/s, p50 {r['p50']:.1f} ms, "
                f"p99 {r['p99']:.1f} ms, HighLevel 200s in the run {r['hl_ok_in_run']:,}"
                + (f", stored {r['stored']:,} for {r['ok']:,} 202s, backlog "
                   f"delivered in {r['drain_s']:.1f} s" if r["app"] == "relay" else ""))
    return (f"  sent {r['sent']:,}, accepted {r['accepted']:,}, lost "
            f"{r['lost']:,}, delivered after recovery {r['after_recovery']:,}"
            + (f", drained {r['drain_s']:.1f} s after recovery"
               if r.get("drain_s") is not None else ""))


def check(r: dict) -> list[str]:
    part, app = r["part"], r["app"]
    notes = []
    if part == "throughput" and set(r["hl_statuses"]) - {200}:
        notes.append(f"throughput {app}: the fake HighLevel answered "
                     f"{r['hl_statuses']} (status: PATCHes) during the run")
    if r.get("violations"):
        notes.append(f"{part} {app}: contract violations at the fake: {r['violations']}")
    if r.get("note"):
        notes.append(f"{part} {app}: {r['note']}")
    return notes


def main(argv=None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    notes: list[str] = []
    facts = facts_for(args.backend, args.pg_url)
    keys = bench_secrets()
    OUT.mkdir(parents=True, exist_ok=True)

    def case(part: str, app: str, _round: int) -> dict:
        print(f"{part}: {APPS[app]} ...", flush=True)
        return (throughput if part == "throughput" else outage)(args, app, keys)

    rows = run_matrix(args.parts, case, inner=args.apps, notes=notes,
                      where=lambda part, app, _r: f"{part} {app}", describe=describe,
                      check=check)
    tp = [r for r in rows if r["part"] == "throughput"]
    out = [r for r in rows if r["part"] == "outage"]
    failed = any(": FAILED: " in n for n in notes)
    for r in tp:
        if r["app"] == "relay" and not (r["stored_ok"] and r["drained"] and not r["hl_extra"]):
            failed = True
            notes.append("throughput relay: stored/delivered check failed (see the table)")
    for r in out:
        if r["app"] == "relay" and (r["lost"] or r.get("drain_s") is None):
            failed = True
            notes.append(f"outage relay: {r['lost']} events lost or not drained")
    notes.append("load average at the end: "
                 + " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} CPUs")
    if any(r["app"] == "relay" for r in tp):
        notes.append("relay throughput: the forwarder and the fake share the 2 cores with the "
                     "web processes while wrk runs, as they would on one machine")
    chart = args.output.with_suffix(".png")
    if tp or out:
        draw(args, tp, out, chart)
    write_report(report(args, tp, out, notes, facts, started, chart), args.output,
                 also=f" and {chart}")
    return 1 if failed or not (tp or out) else 0


if __name__ == "__main__":
    sys.exit(main())
