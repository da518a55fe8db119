"""bench/ratelimit.py's outage case: how soon an outage's backlog reaches HighLevel again.

One forwarder runs against the fake HighLevel (``common.FakeHighLevelProcess``, 100
requests per 10 s per token, ``--latency``). The fake is down (503 to every PATCH, not
counted against the limit) for ``--outage`` s. Meanwhile ``--outage-views`` views of
distinct documents, spread over ``--outage-locations`` locations, are recorded into the
store at an even pace (``Store.record_views``, as the web would). Then the fake is up
again. The figures: from HighLevel's return to the last of those documents answered 200
(the goal: within 10 s), the sends a failing HighLevel received per location per second
while down (one probe per location, not the backlog), and the 429s after the return.
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import time
from collections import Counter

from common import (
    ROOT,
    FakeHighLevelProcess,
    flask,
    fresh_store,
    markdown_table,
    preload_backlog,
    process_tree_cpu,
    run_checked,
    service_env,
    start,
    wait_documents_delivered,
    wait_for,
)


def outage_options(p) -> None:
    p.add_argument("--outage", type=float, default=30.0, help="outage: seconds HighLevel is down")
    p.add_argument("--outage-views", type=int, default=1500,
                   help="outage: views (distinct documents) recorded while it is down")
    p.add_argument("--outage-locations", type=int, default=100, help="outage: locations")
    p.add_argument("--outage-concurrency", type=int, default=64,
                   help="outage: the forwarder's FORWARD_CONCURRENCY")


def _token(n: int) -> str:
    return f"bench-outage-token-{n:04d}"


def run_outage(args, backend: str, keys: dict, *, target: str, command: list[str]) -> dict:
    from service.store.engine import create_engine
    from service.store.queue import Store, View

    label = f"ratelimit-outage-{backend}-{target}"
    locations, total = args.outage_locations, args.outage_views
    with fresh_store(backend, "outage", pg_url=args.pg_url, keep=args.keep) as store:
        env = service_env(store.url, keys, FORWARD_CONCURRENCY=args.outage_concurrency)
        run_checked(f"{label}-db-upgrade", flask("db", "upgrade"), env)
        preload_backlog(store, keys, locations=locations, documents=0, token=_token)
        fake = FakeHighLevelProcess(latency=args.latency).start()
        engine = create_engine(store.url)
        fwd = None
        try:
            fake.set_down(True)
            env["HIGHLEVEL_BASE_URL"] = fake.url
            fwd = start(f"{label}-forwarder", command, env)
            wait_for(lambda: "forwarder.started" in fwd.stdout(), timeout=60,
                     what="forwarder.started")
            queue = Store(engine)
            t_down = time.monotonic()
            step = args.outage / total
            for i in range(total):  # an even pace; several at once when behind
                time.sleep(max(0.0, t_down + i * step - time.monotonic()))
                now = dt.datetime.now(dt.UTC)
                queue.record_views([View(kind="invoice", location_id=f"loc-{i % locations:03d}",
                                         document_id=f"out-{i:06d}", viewed_at=now,
                                         source="bench")], now=now)
            time.sleep(max(0.0, t_down + args.outage - time.monotonic()))
            fake.set_down(False)
            t_up = time.monotonic()
            delivered, done_at = wait_documents_delivered(
                store, fwd, total, deadline=t_up + args.timeout, interval=0.1)
            cpu = process_tree_cpu(fwd.pid)
            loads = os.getloadavg()
        finally:
            engine.dispose()
            if fwd is not None:
                fwd.stop()
            patches = fake.stop()
    ok = [p for p in patches if p[1] == 200]
    down = [p for p in patches if t_down <= p[0] < t_up]
    per_loc = Counter(int(p[3].split("-")[1]) % locations for p in down)
    return {
        "case": "outage", "target": target, "backend": backend, "total": total,
        "delivered": delivered, "finished": done_at is not None,
        "drained_s": (done_at - t_up) if done_at else None,
        "last_ok_s": (max(p[0] for p in ok) - t_up) if ok else None,
        "first_ok_s": (min(p[0] for p in ok) - t_up) if ok else None,
        "down_sends": len(down), "down_per_loc_s": len(down) / locations / args.outage,
        "down_max_loc": max(per_loc.values(), default=0),
        "after_429": sum(1 for p in patches if p[1] == 429 and p[0] >= t_up),
        "twice": sum(1 for n in Counter(p[3] for p in ok).values() if n > 1),
        "fwd_cpu_s": cpu, "load": loads[0], "log": fwd.stdout_path,
    }


def describe_outage(r: dict) -> str:
    return (f"[{r['backend']} {r['target']}] outage: delivered {r['delivered']}/{r['total']}, "
            f"last 200 {_s(r['last_ok_s'])} s after HighLevel's return, "
            f"{r['down_sends']} PATCHes while down ({r['down_per_loc_s']:.2f} per location "
            f"per s), 429s after {r['after_429']}, log {r['log'].relative_to(ROOT)}")


def check_outage(r: dict) -> list[str]:
    where = f"{r['backend']} {r['target']} outage"
    notes = []
    if not r["finished"]:
        notes.append(f"{where}: not drained in time ({r['delivered']}/{r['total']})")
    if r["twice"]:
        notes.append(f"{where}: {r['twice']} documents answered 200 twice")
    return notes


def outage_ok(r: dict) -> bool:
    return r["finished"] and not r["twice"]


def _s(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def outage_report(args, rows: list[dict]) -> str:
    if not rows:
        return ""
    headers = ["store", "forwarder", "delivered", "first 200 after return s",
               "last 200 after return s", "drained (store) s", "PATCHes while down",
               "per location per s while down", "most to one location", "429s after return",
               "sent twice", "forwarder CPU s", "load avg"]
    table = [[r["backend"], r["target"], f"{r['delivered']}/{r['total']}",
              _s(r["first_ok_s"]), _s(r["last_ok_s"]), _s(r["drained_s"]), r["down_sends"],
              f"{r['down_per_loc_s']:.2f}", r["down_max_loc"], r["after_429"], r["twice"],
              f"{r['fwd_cpu_s']:.1f}", f"{r['load']:.1f}"] for r in rows]
    lasts = [r["last_ok_s"] for r in rows if r["target"] == "relay" and r["last_ok_s"]]
    return "\n".join([
        "",
        f"## Outage recovery ({args.outage_views} views, {args.outage_locations} locations, "
        f"HighLevel down {args.outage:g} s)",
        "",
        markdown_table(headers, table),
        "",
        f"- One forwarder (FORWARD_CONCURRENCY {args.outage_concurrency}); the fake "
        f"HighLevel (latency {args.latency:g} s, 100 per 10 s per token) answers 503 to "
        "every PATCH while down, then 200 again. Views are recorded into the store at an "
        "even pace while it is down, each a distinct document.",
        "- after return: from the moment the fake answers again to the first / last of "
        "those documents answered 200 (the fake's clock), and to the store showing all of "
        "them delivered. The goal: the last within 10 s.",
        "- PATCHes while down: what a failing HighLevel received (one probe per location "
        "at a time is the goal, not the backlog).",
        f"- this checkout, median last 200 after return: "
        f"{_s(statistics.median(lasts)) if lasts else '-'} s.",
        "",
    ])
