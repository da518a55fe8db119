"""Forwarder CPU per send, and where it goes: this checkout against another, side by side.

Each measurement runs in a child process of its own on a fresh store (a SQLite file, a
PostgreSQL database): it migrates, preloads ``--documents`` due views across 20 locations
(one token each, stored by the service's ``TokenVault``), builds the forwarder exactly as
``flask --app service forwarder`` does (``wiring.build_forwarder``: its thread pool,
``FORWARD_CONCURRENCY`` sends at once, JSON logs to a file, as production writes them) and
runs it until nothing is due. CPU per send is the child's process time (every thread) over
the sends, start-up and preload excluded. HighLevel is the fake (tests/fake_highlevel.py) in
a process of its own, answering at once (no latency, no rate limit), so the forwarder's own
cost is what bounds it (``--latency`` makes it answer as slowly as HighLevel does).

With ``--baseline DIR`` (an earlier checkout, e.g. ``git worktree add --detach
/work/wt-base main``), that checkout's forwarder is measured in the same rounds, interleaved
(the same fake, the same machine load), so the ratio is side by side. Then one profiled run
of this checkout (an inline executor, so cProfile sees every send in one thread; only with
no latency) gives the top functions. Results: stdout and ``--output``.

    .venv/bin/python bench/forward_profile.py --baseline /work/wt-base       # ~2 min
    .venv/bin/python bench/forward_profile.py --backends sqlite --rounds 1 --documents 500 \\
        --output bench/out/forward-profile.md                                 # a quick check
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402 - after the path set-up, so `python bench/forward_profile.py` works
    OUT,
    ROOT,
    bench_secrets,
    fresh_store,
    machine_section,
    markdown_table,
    report_head,
    store_options,
    usable_backends,
    write_report,
)
from common.fakehl import FakeHighLevelProcess  # noqa: E402

LOCATIONS = 20


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", default="sqlite,postgresql",
                   type=lambda s: [x for x in s.split(",") if x])
    p.add_argument("--documents", type=int, default=3000, help="due documents per run")
    p.add_argument("--concurrency", type=int, default=32, help="FORWARD_CONCURRENCY")
    p.add_argument("--latency", type=float, default=0.0,
                   help="seconds the fake HighLevel takes to answer")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--baseline", type=Path, help="another checkout to measure alongside")
    p.add_argument("--top", type=int, default=30, help="profile lines")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # options on stdin
    store_options(p, "results-forward-profile.md", "the report")
    return p.parse_args(argv)


# -- one measurement, in a child process whose `service` is the checkout's -----------------

def child(options: dict) -> None:
    """Preload, forward everything due, print ``{"sends", "cpu_s", "wall_s", "profile"}``."""
    # bench/common imported this checkout's `service` (the tests' harness needs it): forget
    # it, so the checkout measured is the one imported from here on.
    for name in [m for m in sys.modules if m == "service" or m.startswith("service.")]:
        del sys.modules[name]
    sys.path.insert(0, options["root"])
    import service

    if not service.__file__.startswith(options["root"] + os.sep):
        raise RuntimeError(f"measuring {service.__file__}, not {options['root']}")
    from common import preload_backlog
    from common.stores import Store

    from service.config import load_config
    from service.forward.forwarder import run
    from service.logging import configure_logging
    from service.store.engine import create_engine, upgrade
    from service.wiring import build_forwarder, build_services

    engine = create_engine(options["url"])
    upgrade(engine)
    engine.dispose()
    store = Store(options["backend"], options["url"], lambda: None)
    preload_backlog(store, options["keys"], locations=LOCATIONS,
                    documents=options["documents"], token=lambda n: f"tok-{n}")
    store.close()
    os.environ.clear()
    os.environ.update(options["env"])
    log = open(options["log"], "w")  # noqa: SIM115 - held for the process's life
    sys.stdout = log  # the JSON log lines go where a process manager would keep them
    configure_logging("INFO", "json")
    svc = build_services(load_config(os.environ))
    executor = None
    if options["profile"]:
        from concurrent.futures import Executor, Future

        class Inline(Executor):
            def submit(self, fn, /, *args, **kwargs):
                future = Future()
                future.set_result(fn(*args, **kwargs))
                return future

        executor = Inline()
    forwarder = build_forwarder(svc, executor=executor)
    profiler = None
    if options["profile"]:
        import cProfile

        profiler = cProfile.Profile()
    cpu, wall = time.process_time(), time.monotonic()
    if profiler:
        profiler.enable()
    sends = run(forwarder, once=True)
    if profiler:
        profiler.disable()
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    text = ""
    if profiler:
        import io
        import pstats

        buffer = io.StringIO()
        stats = pstats.Stats(profiler, stream=buffer)
        stats.sort_stats("cumulative").print_stats(options["top"])
        stats.sort_stats("tottime").print_stats(options["top"])
        text = buffer.getvalue()
    sys.stdout = sys.__stdout__
    print(json.dumps({"sends": sends, "cpu_s": cpu, "wall_s": wall, "profile": text}))


def measure(root: Path, backend: str, args, keys: dict, hl_url: str, *,
            profile: bool = False) -> dict:
    with fresh_store(backend, "fwdprof", pg_url=args.pg_url) as store:
        env = dict(os.environ)
        env.update({"RELAY_ENV": "production", "DATABASE_URL": store.url,
                    "HIGHLEVEL_BASE_URL": hl_url, "RATE_LIMIT_BURST": "1000000/10s",
                    "FORWARD_CONCURRENCY": str(args.concurrency), "LOG_LEVEL": "INFO",
                    "PUBLIC_BASE_URL": "http://127.0.0.1:8000", **keys})
        options = {"root": str(root), "url": store.url, "backend": backend, "keys": keys,
                   "documents": args.documents, "env": env, "profile": profile,
                   "top": args.top, "log": str(OUT / f"forward-profile-{backend}.log")}
        done = subprocess.run(
            [sys.executable, __file__, "--child"], input=json.dumps(options),
            capture_output=True, text=True, timeout=600, cwd=root,
            env={**os.environ, "PYTHONPATH": str(root)})
        if done.returncode:
            raise RuntimeError(f"child failed ({root}):\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        if result["sends"] != args.documents:
            raise RuntimeError(f"{root}: sent {result['sends']} of {args.documents}")
        return result


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        child(json.loads(sys.stdin.read()))
        return 0
    started = dt.datetime.now(dt.UTC)
    notes: list[str] = []
    backends, facts = usable_backends(args.backends, args.pg_url, notes)
    OUT.mkdir(parents=True, exist_ok=True)
    keys = bench_secrets()
    targets = [("this checkout", ROOT)]
    if args.baseline:
        targets.append((f"baseline ({args.baseline})", args.baseline.resolve()))
    per: dict[tuple[str, str], list[float]] = {}
    rows, profiles = [], {}
    hl = FakeHighLevelProcess(latency=args.latency, rate_limit=False,
                              rate_limit_max=1_000_000).start()
    try:
        for backend in backends:
            for n in range(args.rounds):
                order = targets if n % 2 == 0 else targets[::-1]
                for name, root in order:
                    result = measure(root, backend, args, keys, hl.url)
                    ms = result["cpu_s"] / result["sends"] * 1000
                    per.setdefault((backend, name), []).append(ms)
                    print(f"{backend} round {n + 1} {name}: {ms:.3f} ms CPU per send, "
                          f"{result['sends'] / result['wall_s']:.0f} sends/s", flush=True)
            if not args.latency:  # sends one after another: only without latency
                profiles[backend] = measure(ROOT, backend, args, keys, hl.url,
                                            profile=True)["profile"]
    finally:
        hl.stop()
    for (backend, name), values in per.items():
        row = [backend, name, f"{statistics.median(values):.3f}",
               ", ".join(f"{v:.3f}" for v in values)]
        if args.baseline and name == "this checkout":
            base = statistics.median(per[(backend, targets[1][0])])
            row.append(f"{statistics.median(values) / base:.2f}x")
        elif args.baseline:
            row.append("1.00x")
        rows.append(row)
    headers = ["store", "forwarder", "CPU ms per send (median)", "rounds"]
    if args.baseline:
        headers.append("vs baseline")
    lines = report_head("Forwarder CPU per send (`bench/forward_profile.py`)",
                        started=started, short=args.documents < 1000)
    lines += [markdown_table(headers, rows), "",
              f"- {args.documents} due documents per run across {LOCATIONS} locations, "
              f"FORWARD_CONCURRENCY={args.concurrency}, rate limit out of the way; the fake "
              f"HighLevel answers after {args.latency:g} s in its own process, with "
              "keep-alive.",
              "- CPU: the forwarder process's own time (all threads) from the first claim to "
              "nothing due, over the sends; JSON logs written to a file.",
              f"- {args.rounds} rounds, targets interleaved (order reversed on even rounds).",
              ""]
    for backend, text in profiles.items():
        lines += [f"## Profile ({backend}, this checkout, inline executor)", "", "```",
                  text.strip()[:12000], "```", ""]
    lines += machine_section(facts, notes)
    write_report("\n".join(lines), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
