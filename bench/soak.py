"""Soak: the relay at a steady rate for 10 minutes, memory (RSS) of every process sampled.

The relay runs as the Procfile runs it (gunicorn ``service:create_app()`` with
``--workers`` x ``--threads``, and one ``flask --app service forwarder``) on a fresh SQLite
file (``--backend``), sending to the fake HighLevel (``tests/fake_highlevel.py`` in its own
process, ``--latency`` 0.15 s per PATCH, HighLevel's 100 / 10 s per token enforced). Every
location has its token, stored through the admin API.

Load: open loop (``common.PacedLoad``), ``--rate`` requests per second for ``--duration``
seconds, a ``--pixel-share`` of them ``GET /v1/pixel/<token>.gif`` (bench/pixel.py's
signed tokens for ``--invoices`` invoices: each invoice is viewed again every
``invoices / (rate x share)`` seconds, so views coalesce as real reopenings do) and the
rest ``POST /v1/events`` with a new eventId and invoiceId each.

Every ``--sample-every`` seconds: VmRSS (``/proc/<pid>/status``) and open file descriptors
of the gunicorn master, each worker and the forwarder, and the store's counts (views stored,
to forward, delivered). After the load: the forwarder gets up to ``--drain-timeout`` s to
deliver everything (views coalesced within ``COALESCE_WINDOW_SECONDS`` wait up to that
long by design).

Verdict: per process, the mean RSS over the last ``--window`` (60) s of the load against
the first ``--window`` s; flat if it grew by less than ``--max-growth`` (10) percent. And
every view stored must be delivered: rows in ``events`` = views the load got 2xx for, and
each delivered by the store's own rule (``seq <= sent_seq``). The script exits non-zero if
either fails.

    .venv/bin/python bench/soak.py                          # 10 minutes + drain
    .venv/bin/python bench/soak.py --duration 20 --coalesce-window 5 \\
        --output bench/out/soak.md                           # a quick check of the script

Results: stdout, ``--output`` (``bench/results-soak.md``), the samples as CSV and a chart
beside it (``.csv``, ``.png``). Everything on 127.0.0.1; every wait is bounded; every
process is stopped.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402 - after the path set-up, so `python bench/soak.py` works
    PROBLEMS,
    FakeHighLevelProcess,
    PacedLoad,
    bench_secrets,
    child_pids,
    event_counts,
    facts_for,
    fresh_store,
    log_text,
    machine_section,
    markdown_table,
    percentile,
    pyplot,
    relative_to,
    relay_processes,
    report_head,
    rss_kib,
    store_options,
    wait_delivered,
    write_report,
)
from pixel import ACCEPT, USER_AGENT, mint_paths  # noqa: E402

DEFAULT_DURATION = 600


def parse_args(argv=None) -> argparse.Namespace:
    cpus = os.cpu_count() or 1
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--duration", type=float, default=DEFAULT_DURATION,
                   help="seconds of steady load")
    p.add_argument("--warmup", type=float, default=30.0,
                   help="seconds of the same load before the measured --duration (sampled, "
                        "shown, not in the verdict's first window)")
    p.add_argument("--rate", type=float, default=50.0, help="requests per second")
    p.add_argument("--pixel-share", type=float, default=0.5,
                   help="share of requests that are pixel GETs (the rest POST /v1/events)")
    p.add_argument("--invoices", type=int, default=1000, help="distinct pixel invoices")
    p.add_argument("--locations", type=int, default=20, help="locations, one token each")
    p.add_argument("--sample-every", type=float, default=5.0, help="seconds between samples")
    p.add_argument("--window", type=float, default=60.0,
                   help="seconds compared at the start and the end of the load")
    p.add_argument("--max-growth", type=float, default=10.0,
                   help="percent RSS growth (last window over first) still called flat")
    p.add_argument("--latency", type=float, default=0.15,
                   help="seconds the fake HighLevel takes to answer each PATCH")
    p.add_argument("--workers", type=int, default=2 * cpus, help="WEB_CONCURRENCY")
    p.add_argument("--threads", type=int, default=16, help="GUNICORN_THREADS (the shipped default)")
    p.add_argument("--forward-concurrency", type=int, default=16, help="FORWARD_CONCURRENCY")
    p.add_argument("--coalesce-window", type=int, default=60,
                   help="COALESCE_WINDOW_SECONDS (the service default: 60)")
    p.add_argument("--drain-timeout", type=float, default=300.0,
                   help="longest wait after the load for every view to be delivered")
    p.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    store_options(p, "results-soak.md", "the report; .csv (samples) and .png (chart) go beside it")
    args = p.parse_args(argv)
    if not 0 <= args.pixel_share <= 1 or args.rate <= 0 or args.duration <= 0:
        p.error("--pixel-share must be 0..1, --rate and --duration positive")
    return args


def locations_of(paths: list[str], keys: dict) -> list[str]:
    """The locations the signed pixel tokens name (each needs a token at HighLevel)."""
    from service.ingest.pixels import PixelSigner

    signer = PixelSigner([k.strip() for k in keys["PIXEL_SIGNING_KEYS"].split(",")])
    now = dt.datetime.now(dt.UTC)
    found = {signer.verify(p.removeprefix("/v1/pixel/").removesuffix(".gif"), now=now)
             for p in paths}
    if None in found:
        raise RuntimeError("a minted pixel token does not verify")
    return sorted({t.location_id for t in found})


def sample(relay, labels: dict[int, str]) -> list[tuple[str, int, int | None, int | None]]:
    """(process, pid, RSS KiB, open fds) of the gunicorn master, its workers, the forwarder."""
    procs = [(relay.web.pid, "gunicorn master")]
    procs += [(pid, None) for pid in sorted(child_pids(relay.web.pid))]
    procs += [(relay.forwarder.pid, "forwarder")]
    procs += [(pid, None) for pid in sorted(child_pids(relay.forwarder.pid))]
    out = []
    for pid, name in procs:
        if pid not in labels:
            workers = sum(1 for v in labels.values() if v.startswith("worker"))
            labels[pid] = name or (f"worker {workers + 1}" if pid in child_pids(relay.web.pid)
                                   else f"forwarder child {pid}")
        try:
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            fds = None
        out.append((labels[pid], pid, rss_kib(pid), fds))
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    facts = facts_for(args.backend, args.pg_url)
    keys = bench_secrets()
    paths = mint_paths(keys, args.invoices, args.locations)
    locations = locations_of(paths, keys)
    tokens = {loc: f"bench-soak-token-{i:03d}" for i, loc in enumerate(locations)}
    key = keys["INGEST_API_KEYS"]
    json_headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    pixel_headers = {"User-Agent": USER_AGENT, "Accept": ACCEPT}
    pixel_every = round(args.pixel_share * 100)

    def make_request(i: int) -> tuple:
        if i % 100 < pixel_every:
            return "pixel", "GET", paths[i % len(paths)], None, pixel_headers
        body = (f'{{"locationId":"{locations[i % len(locations)]}","invoiceId":"soak-{i}",'
                f'"eventId":"soak-{i}","source":"bench"}}').encode()
        return "event", "POST", "/v1/events", body, json_headers

    samples: list[dict] = []
    labels: dict[int, str] = {}
    notes: list[str] = []
    with fresh_store(args.backend, "soak", pg_url=args.pg_url, keep=args.keep) as store, \
            FakeHighLevelProcess(latency=args.latency) as fake, \
            relay_processes(store, keys, label="soak", highlevel_url=fake.url,
                            workers=args.workers, threads=args.threads, tokens=tokens,
                            FORWARD_CONCURRENCY=args.forward_concurrency,
                            COALESCE_WINDOW_SECONDS=args.coalesce_window) as relay:
        load = PacedLoad(relay.port, make_request, rate=args.rate,
                         duration=args.warmup + args.duration, connections=32,
                         timeout=10).start()
        origin = load.start_at + args.warmup  # t = 0: the measured load begins

        def take(phase: str) -> None:
            counts = event_counts(store)
            t = time.monotonic() - origin
            now = sample(relay, labels)
            samples.extend({"seconds": round(t, 1), "phase": phase, "process": name,
                            "pid": pid, "rss_kib": rss, "fds": fds, **counts}
                           for name, pid, rss, fds in now)
            print(f"  t={t:6.0f} s  stored {counts['stored']:,}  delivered "
                  f"{counts['delivered']:,}  RSS MiB: " + ", ".join(
                      f"{name} {rss / 1024:.0f}" for name, _pid, rss, _fds in now if rss),
                  flush=True)

        print(f"soak: {args.rate:g} req/s for {args.warmup:g} + {args.duration:g} s on "
              f"127.0.0.1:{relay.port}", flush=True)
        next_at = load.start_at
        while time.monotonic() < load.end_at:
            time.sleep(max(0.0, next_at - time.monotonic()))
            take("load" if time.monotonic() >= origin else "warmup")
            next_at += args.sample_every
            if not (relay.web.running() and relay.forwarder.running()):
                notes.append("a relay process exited during the load")
                break
        results = load.join()
        take("load end")
        drain_from = time.monotonic()
        counts, drained_at = wait_delivered(store, timeout=args.drain_timeout,
                                            alive=relay.forwarder.running)
        take("drained")
        hl_patches = fake.patches()
        not_human = store.scalar(
            "SELECT coalesce(sum(views), 0) FROM events WHERE verdict <> 'human'")
    logs = {p.name: log_text(p) for p in (relay.web, relay.forwarder)}

    # -- what the load got, what the store holds --------------------------------------------
    by_label: dict[str, list] = {"pixel": [], "event": []}
    for r in results:
        by_label[r[0]].append(r)
    ok = {k: sum(1 for r in v if 200 <= r[3] < 300) for k, v in by_label.items()}
    no_answer = sum(1 for r in results if r[3] <= 0)
    failed = sum(1 for r in results if r[3] > 0 and not 200 <= r[3] < 300)
    lat = {k: sorted((r[2] - r[1]) * 1000 for r in v if r[3] > 0) for k, v in by_label.items()}
    accepted = ok["pixel"] + ok["event"]
    stored_ok = accepted <= counts["stored"] <= accepted + no_answer
    delivered_ok = drained_at is not None and counts["delivered"] == counts["forward"]
    hl_ok = sum(1 for p in hl_patches if p[1] == 200)
    hl_docs = len({(p[2], p[3]) for p in hl_patches if p[1] == 200})

    # -- memory verdict -----------------------------------------------------------------------
    window = min(args.window, args.duration / 4)
    verdicts = []
    for name in dict.fromkeys(s["process"] for s in samples):
        mine = [s for s in samples if s["process"] == name and s["rss_kib"]]
        first = [s["rss_kib"] for s in mine if s["seconds"] < window and s["phase"] == "load"]
        last = [s["rss_kib"] for s in mine
                if args.duration - window <= s["seconds"] and s["phase"] != "drained"]
        if not first or not last:
            verdicts.append({"process": name, "flat": False, "why": "not sampled throughout"})
            continue
        a, b = statistics.fmean(first), statistics.fmean(last)
        growth = (b - a) / a * 100
        verdicts.append({
            "process": name, "pids": sorted({s["pid"] for s in mine}), "first": a, "last": b,
            "growth": growth, "max": max(s["rss_kib"] for s in mine),
            "fds": (mine[0]["fds"], mine[-1]["fds"]), "flat": growth < args.max_growth})
    memory_ok = bool(verdicts) and all(v["flat"] for v in verdicts)
    for name, text in logs.items():  # any of these fails the run
        for what in PROBLEMS:
            if text.count(what):
                notes.append(f"{text.count(what)} {what!r} in the log of {name}")
    ok_all = stored_ok and delivered_ok and memory_ok and not failed and not notes

    csv_path = args.output.with_suffix(".csv")
    chart = args.output.with_suffix(".png")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(samples[0]))
        writer.writeheader()
        writer.writerows(samples)
    draw(args, samples, verdicts, window, chart)
    notes.append("load average at the end: "
                 + " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} CPUs")
    facts_run = {
        "sent": len(results), "accepted": accepted, "ok": ok, "failed": failed,
        "no_answer": no_answer, "lat": lat,
        "statuses": dict(Counter(r[3] for r in results)), "counts": counts, "stored_ok": stored_ok,
        "delivered_ok": delivered_ok,
        "drain_s": (drained_at - drain_from) if drained_at else None,
        "hl_ok": hl_ok, "hl_docs": hl_docs, "not_human": not_human,
        "offered": len(results) / (args.warmup + args.duration),
    }
    text = report(args, facts_run, verdicts, window, memory_ok, ok_all, notes, facts, started,
                  chart, csv_path)
    write_report(text, args.output, also=f", {csv_path} and {chart}")
    return 0 if ok_all else 1


def draw(args, samples: list[dict], verdicts: list[dict], window: float, path: Path) -> None:
    """RSS per process over time; views stored and delivered over time."""
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(12, 8), sharex=True,
                                   gridspec_kw={"height_ratios": [2, 1]})
    growth = {v["process"]: v.get("growth") for v in verdicts}
    for name in dict.fromkeys(s["process"] for s in samples):
        mine = [s for s in samples if s["process"] == name and s["rss_kib"]]
        g = growth.get(name)
        ax1.plot([s["seconds"] for s in mine], [s["rss_kib"] / 1024 for s in mine],
                 marker=".", markersize=3,
                 label=f"{name} ({g:+.1f}%)" if g is not None else name)
    for ax in (ax1, ax2):
        if args.warmup:
            ax.axvspan(-args.warmup, 0, color="grey", alpha=0.12)
        ax.axvspan(0, window, color="green", alpha=0.06)
        ax.axvspan(args.duration - window, args.duration, color="green", alpha=0.06)
        ax.axvline(args.duration, color="grey", linestyle="--", linewidth=1)
        ax.grid(alpha=0.3)
    ax1.set_ylim(bottom=0)
    ax1.set_ylabel("RSS, MiB")
    ax1.set_title(f"RSS per process (legend: mean of the last {window:.0f} s over the first "
                  f"{window:.0f} s, shaded; flat below +{args.max_growth:g}%)", fontsize=10)
    ax1.legend(fontsize=8, loc="lower right", ncol=2)
    counts = [s for s in samples if s["process"] == "gunicorn master"]
    ax2.plot([s["seconds"] for s in counts], [s["stored"] for s in counts],
             label="views stored")
    ax2.plot([s["seconds"] for s in counts], [s["delivered"] for s in counts],
             label="views delivered (HighLevel told)")
    ax2.set_ylabel("views (cumulative)")
    ax2.set_xlabel("seconds since the measured load began (grey: warm-up; dashed: the load "
                   "ends, then the drain)")
    ax2.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"Soak: {args.rate:g} req/s ({args.pixel_share:.0%} pixel GET, the rest "
                 f"POST /v1/events) for {args.duration:g} s, HighLevel at "
                 f"{args.latency * 1000:.0f} ms, gunicorn {args.workers}x{args.threads} + "
                 f"forwarder, {os.cpu_count()} CPUs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(args, run: dict, verdicts: list[dict], window: float, memory_ok: bool,
           ok_all: bool, notes: list[str], facts: list, started: dt.datetime, chart: Path,
           csv_path: Path) -> str:
    mem_rows = [[v["process"], ", ".join(map(str, v.get("pids", []))),
                 f"{v['first'] / 1024:.1f}" if "first" in v else "-",
                 f"{v['last'] / 1024:.1f}" if "last" in v else "-",
                 f"{v['growth']:+.1f}%" if "growth" in v else "-",
                 f"{v['max'] / 1024:.1f}" if "max" in v else "-",
                 "{} -> {}".format(*v["fds"]) if "fds" in v else "-",
                 "flat" if v["flat"] else f"NOT FLAT {v.get('why', '')}".strip()]
                for v in verdicts]
    c = run["counts"]
    lat = run["lat"]
    load_rows = [
        ["requests sent, warm-up included (offered rate)",
         f"{run['sent']:,} ({run['offered']:.1f}/s)"],
        ["pixel GETs answered 200", f"{run['ok']['pixel']:,}"],
        ["POST /v1/events answered 202", f"{run['ok']['event']:,}"],
        ["other answers / no answer", f"{run['failed']:,} / {run['no_answer']:,}"
         + (f" (by status: {run['statuses']})" if run["failed"] or run["no_answer"] else "")],
        ["latency p50 / p99 ms, pixel (from when due)",
         f"{percentile(lat['pixel'], 50):.1f} / {percentile(lat['pixel'], 99):.1f}"],
        ["latency p50 / p99 ms, events (from when due)",
         f"{percentile(lat['event'], 50):.1f} / {percentile(lat['event'], 99):.1f}"],
        ["views stored (rows in `events`)",
         f"{c['stored']:,} ({'OK' if run['stored_ok'] else 'MISMATCH'}: "
         f"{run['accepted']:,} answered 2xx)"],
        ["views to forward / delivered at the end",
         f"{c['forward']:,} / {c['delivered']:,} "
         f"({'OK' if run['delivered_ok'] else 'NOT ALL DELIVERED'})"],
        ["drain after the load",
         f"{run['drain_s']:.1f} s" if run["drain_s"] is not None
         else f"not done in {args.drain_timeout:g} s"],
        ["PATCHes HighLevel answered 200 / distinct documents",
         f"{run['hl_ok']:,} / {run['hl_docs']:,} (views of one document coalesce)"],
        ["views not classified human", f"{run['not_human']:,}"],
    ]
    lines = [
        *report_head("Soak: the relay at a steady rate, memory of every process",
                     started=started, short=args.duration < DEFAULT_DURATION),
        f"**Verdict: {'PASS' if ok_all else 'FAIL'}**: memory "
        f"{'flat' if memory_ok else 'NOT flat'} (every process's mean RSS over the last "
        f"{window:.0f} s of load within +{args.max_growth:g}% of its first {window:.0f} s); "
        f"every stored view {'delivered' if run['delivered_ok'] else 'NOT delivered'}.",
        "",
        f"![RSS over time]({relative_to(chart, args.output)})",
        "",
        "## Memory (RSS, MiB)",
        "",
        markdown_table(["process", "pid", f"first {window:.0f} s", f"last {window:.0f} s",
                        "growth", "max", "open fds (first -> last)", "verdict"], mem_rows),
        "",
        f"Sampled every {args.sample_every:g} s from `/proc/<pid>/status` (VmRSS) and "
        f"`/proc/<pid>/fd`; every sample in `{relative_to(csv_path, args.output)}` (with "
        "the store's counts at that moment). A process that restarted would show a second "
        "pid.",
        "",
        "## Load and delivery",
        "",
        markdown_table(["what", "value"], load_rows),
        "",
        f"- Load: open loop, {args.rate:g} requests/s for {args.warmup:g} s of warm-up "
        f"(sampled, not in the verdict) then {args.duration:g} s (each request "
        "due at its time whatever the earlier answers; latency counted from when it was "
        f"due), {args.pixel_share:.0%} `GET /v1/pixel/<token>.gif` over {args.invoices} "
        f"invoices in {args.locations} locations (desktop Chrome User-Agent), the rest "
        "`POST /v1/events` with a new eventId and invoiceId each; 32 keep-alive "
        "connections.",
        "- views stored: rows in `events` against the 2xx the load got (OK: equal, or more "
        "by at most the requests that got no answer). delivered: the store's own rule "
        "(`GET /v1/events/<id>` says `delivered`: the view's seq <= its document's "
        f"sent_seq), after the forwarder had up to {args.drain_timeout:g} s to finish; views "
        f"of one document within COALESCE_WINDOW_SECONDS={args.coalesce_window} wait for "
        "the end of that window, by design.",
        f"- Relay: `gunicorn --config config/gunicorn.conf.py \"service:create_app()\"`, "
        f"WEB_CONCURRENCY={args.workers}, GUNICORN_THREADS={args.threads}, "
        "RELAY_ENV=production, access log on; one `flask --app service forwarder`, "
        f"FORWARD_CONCURRENCY={args.forward_concurrency}; a fresh {args.backend} store; "
        "tokens stored with `PUT /v1/locations/<id>/token`.",
        f"- Fake HighLevel: `tests.fake_highlevel.FakeHighLevel` in its own process, "
        f"{args.latency:g} s per PATCH, 100 requests / 10 s per token enforced.",
        "",
        *machine_section(facts, notes),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
