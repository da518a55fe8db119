"""Where a pixel request's time goes: in-process timings of each step, for bench/pixel.py.

Single thread, no HTTP server, so each number is one step's own cost (wall and CPU per
operation; CPU = this process's user+system time, which a busy machine inflates less
than wall time). Steps:

1. the Flask request path through ``app.test_client()``: the bare app, the relay with
   its store replaced by a no-op (everything but the database), and the relay with each
   real store;
2. the parts of ``record_pixel_view``: signature check, classifier, View;
3. ``Store.record_views([view])`` alone: SQLite as the service configures it
   (synchronous=FULL), SQLite with synchronous=OFF (the same work minus the fsync: NOT a
   proposal, a measurement), PostgreSQL; and the same two statements replayed through the
   bare DB-API driver (sqlite3 / psycopg) with no SQLAlchemy, to price SQLAlchemy;
4. group commit: N views in one transaction, per view: with the store's own per-view
   statements (as ``bench/pixel_groupcommit.py`` does by default), with its ``lean`` mode
   (two prebuilt multi-row statements per group), and through the bare driver.

    .venv/bin/python bench/pixel_profile.py              # SQLite and PostgreSQL
    .venv/bin/python bench/pixel_profile.py --backends sqlite --n 200

Scratch stores: a SQLite file under bench/out/ and a PostgreSQL database, both dropped.
Prints a Markdown section (also written to bench/out/pixel-profile.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    DEFAULT_PG_URL,
    OUT,
    ROOT,
    fresh_store,
    markdown_table,
    postgres_reachable,
)

sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from pixel_groupcommit import LeanWriter  # noqa: E402

from service.pixels import PixelSigner, PixelTarget  # noqa: E402
from service.store import View  # noqa: E402

UA = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
      "Chrome/126.0.0.0 Safari/537.36")
KEY = "bench-profile-key-" + "k" * 20


def measure(fn, n: int, *, repeat: int = 3) -> tuple[float, float]:
    """(wall ms, CPU ms) per call: the best of ``repeat`` runs of ``n`` calls."""
    best = None
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        for i in range(n):
            fn(i)
        wall, cpu = (time.perf_counter() - t0) / n * 1e3, (time.process_time() - c0) / n * 1e3
        if best is None or wall < best[0]:
            best = (wall, cpu)
    return best


def view(i: int, now: dt.datetime) -> View:
    return View(kind="invoice", location_id=f"loc{i % 20:02d}", document_id=f"doc{i % 1000:04d}",
                viewed_at=now, source="pixel", user_agent=UA, ip="127.0.0.1",
                verdict="human", verdict_reason="no-signal", forward=True,
                request_id=uuid.uuid4().hex)


def make_app(url: str, *, null_store: bool = False, sync_off: bool = False):
    from cryptography.fernet import Fernet

    from service import create_app
    from service.db import upgrade

    app = create_app({"DATABASE_URL": url, "RELAY_ENV": "test", "PIXEL_SIGNING_KEYS": [KEY],
                      "INGEST_API_KEYS": ["ik_x"], "ADMIN_API_KEYS": ["ak_x"],
                      "TOKEN_ENCRYPTION_KEYS": [Fernet.generate_key().decode()],
                      "LOG_LEVEL": "WARNING"})
    svc = app.extensions["service"]
    if sync_off:
        add_sync_off(svc.engine)
    upgrade(svc.engine)
    if null_store:
        from service.store import Accepted

        class NullStore:
            def record_views(self, views, *, now):
                return [Accepted(str(uuid.uuid4()), "queued") for _ in views]
        svc.store = NullStore()
    return app


def add_sync_off(engine) -> None:
    @sa.event.listens_for(engine, "connect")
    def _off(dbapi_conn, _rec):  # runs after the service's listener: overrides FULL
        dbapi_conn.execute("PRAGMA synchronous=OFF")
    engine.dispose()


class Capture:
    """Record the (statement, parameters) SQLAlchemy sends for one call, to replay them."""

    def __init__(self, engine):
        self.engine, self.calls = engine, []

    def __enter__(self):
        sa.event.listen(self.engine, "before_cursor_execute", self._hook)
        return self

    def __exit__(self, *exc):
        sa.event.remove(self.engine, "before_cursor_execute", self._hook)

    def _hook(self, conn, cursor, statement, parameters, context, executemany):
        if executemany:  # one row here: replay it as a plain execute
            parameters = parameters[0]
        self.calls.append((statement, parameters))


def _subst(params, old, new):
    if isinstance(params, dict):
        return {k: (new if v == old else v) for k, v in params.items()}
    return tuple(new if v == old else v for v in params)


def raw_replayer(store, now):
    """Capture one record_views call's statements; return fn(n_views) replaying them through
    the bare DB-API connection (same SQL, same parameter values, a fresh event id each)."""
    v = view(0, now)
    with Capture(store.engine) as cap:
        accepted = store.record_views([v], now=now)
    stmts = [(s, p) for s, p in cap.calls if s.lstrip().upper().startswith("INSERT")]
    upsert, insert = stmts[0], stmts[1]
    event_id = accepted[0].id
    raw = store.engine.raw_connection()
    dbapi = raw.driver_connection
    sqlite = store.dialect == "sqlite"

    def run(n: int) -> None:
        cur = dbapi.cursor()
        if sqlite:
            cur.execute("BEGIN IMMEDIATE")
        for _ in range(n):
            cur.execute(*upsert)
            cur.fetchone()
            cur.execute(insert[0], _subst(insert[1], event_id, str(uuid.uuid4())))
        dbapi.commit() if not sqlite else cur.execute("COMMIT")
        cur.close()

    return run, raw


def profile_backend(args, backend, backends, path, headers, now, n, rows, request_rows,
                    group_rows) -> None:
    def add(table, what, wall_cpu, note=""):
        table.append([what, f"{wall_cpu[0]:.3f}", f"{wall_cpu[1]:.3f}", note])

    with fresh_store(backend, "profile", pg_url=args.pg_url) as st:
        url = st.url if backend == "sqlite" else st.url.replace(
            "postgresql://", "postgresql+psycopg://", 1)
        app = make_app(url, null_store=True)
        c = app.test_client()
        if backend == backends[0]:
            add(request_rows, "relay: GET pixel, store replaced by a no-op",
                measure(lambda i: c.get(path, headers=headers), n * 5),
                "routing, flask-smorest, request id, token, classifier, View")
        app.extensions["service"].engine.dispose()
        app = make_app(url)
        c = app.test_client()
        store = app.extensions["service"].store
        add(request_rows, f"relay: GET pixel, {backend}"
            + (" (synchronous=FULL)" if backend == "sqlite" else ""),
            measure(lambda i: c.get(path, headers=headers), n))
        add(rows, f"Store.record_views([view]), {backend}"
            + (" synchronous=FULL" if backend == "sqlite" else ""),
            measure(lambda i: store.record_views([view(i, now)], now=now), n),
            "= the write lock's hold time on SQLite" if backend == "sqlite" else "")
        replay, raw = raw_replayer(store, now)
        lean = LeanWriter(store)
        add(rows, f"same 2 statements + commit via bare {backend} driver",
            measure(lambda i: replay(1), n))
        for size in args.groups:
            def group(i, size=size):
                with store.engine.begin() as conn:
                    for j in range(size):  # one request's view at a time, as the prototype
                        store._record(conn, [view(i * size + j, now)], now)
            wall, cpu = measure(group, max(3, n // size))
            group_rows.append([backend + (" FULL" if backend == "sqlite" else ""), size,
                               f"{wall / size:.3f}", f"{cpu / size:.3f}",
                               f"{1000 / (wall / size):,.0f}"])
            def lean_group(i, size=size):
                with store.engine.begin() as conn:
                    lean.record(conn, [([view(i * size + j, now)], now) for j in range(size)])
            wall, cpu = measure(lean_group, max(3, n // size))
            group_rows.append([backend + " lean (2 prebuilt multi-row statements)", size,
                               f"{wall / size:.3f}", f"{cpu / size:.3f}",
                               f"{1000 / (wall / size):,.0f}"])
            wall, cpu = measure(lambda i, size=size: replay(size), max(3, n // size))
            group_rows.append([backend + " bare driver", size, f"{wall / size:.3f}",
                               f"{cpu / size:.3f}", f"{1000 / (wall / size):,.0f}"])
        raw.close()
        app.extensions["service"].engine.dispose()
        if backend == "sqlite":
            app = make_app(url, sync_off=True)
            store = app.extensions["service"].store
            add(rows, "Store.record_views([view]), sqlite synchronous=OFF",
                measure(lambda i: store.record_views([view(i, now)], now=now), n),
                "no fsync: the rest of the transaction")
            app.extensions["service"].engine.dispose()


def fsync_probe():
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "fsync-probe.bin"

    def probe(i: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, b"x" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
        if i % 100 == 99:
            path.unlink(missing_ok=True)
    return probe


def run(args) -> str:
    now = dt.datetime.now(dt.UTC)
    signer = PixelSigner([KEY])
    token = signer.sign(PixelTarget("invoice", "6578278e879ad2646715ba9c",
                                    "6578278e879ad2646715ba9d", now + dt.timedelta(days=30)))
    path = f"/v1/pixel/{token}.gif"
    headers = {"User-Agent": UA}
    n = args.n
    rows: list[list] = []
    request_rows: list[list] = []

    def add(table, what, wall_cpu, note=""):
        table.append([what, f"{wall_cpu[0]:.3f}", f"{wall_cpu[1]:.3f}", note])

    # -- 1. the request path ---------------------------------------------------------------
    sys.path.insert(0, str(ROOT / "bench"))
    from bare_app import create_app as bare

    client = bare().test_client()
    add(request_rows, "bare app: GET pixel (test client)",
        measure(lambda i: client.get(path, headers=headers), n * 5))

    # -- 2. parts -------------------------------------------------------------------------
    from service.verdicts import Classifier

    classifier = Classifier.load(None)
    add(rows, "PixelSigner.verify (HMAC-SHA256, itsdangerous)",
        measure(lambda i: signer.verify(token, now=now), n * 20))
    add(rows, "Classifier.classify (service/verdicts.py; the Chrome UA matches no rule)",
        measure(lambda i: classifier.classify(user_agent=UA, ip="127.0.0.1"), n * 20))
    add(rows, "View(...) dataclass", measure(lambda i: view(i, now), n * 20))
    add(rows, "write 4 KiB + os.fsync on bench/out/ (the disk's flush)",
        measure(fsync_probe(), n), "what synchronous=FULL / PostgreSQL wait for per commit")

    backends = list(args.backends)
    if "postgresql" in backends and postgres_reachable(args.pg_url):
        backends.remove("postgresql")
    group_rows: list[list] = []
    for backend in backends:
        profile_backend(args, backend, backends, path, headers, now, n, rows,
                        request_rows, group_rows)

    hdr = ["step", "wall ms / op", "CPU ms / op", "note"]
    text = "\n".join([
        "### Request path (in-process, one thread)", "",
        markdown_table(hdr, request_rows), "",
        "### Steps of a recorded view", "",
        markdown_table(hdr, rows), "",
        "### Group commit: N views in one transaction, per view", "",
        markdown_table(["store / path", "views per commit", "wall ms / view",
                        "CPU ms / view", "views/s one writer"], group_rows), "",
    ])
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=300, help="operations per measurement")
    p.add_argument("--groups", type=lambda v: [int(x) for x in v.split(",")],
                   default=[1, 8, 32], help="views per transaction to try")
    p.add_argument("--backends", type=lambda v: [x.strip() for x in v.split(",")],
                   default=["sqlite", "postgresql"])
    p.add_argument("--pg-url", default=DEFAULT_PG_URL)
    args = p.parse_args(argv)
    text = run(args)
    (OUT / "fsync-probe.bin").unlink(missing_ok=True)
    print(text)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "pixel-profile.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
