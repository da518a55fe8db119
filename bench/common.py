"""Shared plumbing for the benchmarks: fresh stores, service processes, the run loop,
machine facts and reports.

The processes are the end-to-end tests' (``tests/processes.py``): the same commands, the
same clean environment, logs in files (here under ``bench/out/``), always reaped.
Nothing here talks to anything but 127.0.0.1. Every wait is bounded.
"""

from __future__ import annotations

import atexit
import math
import os
import platform
import re
import secrets
import shlex
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"  # logs and SQLite files (git-ignored)
DEFAULT_PG_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
PROBLEMS = ("Traceback", "WORKER TIMEOUT", "pixel.record_failed")  # in a server's log

sys.path.insert(0, str(ROOT))  # `tests` (the process harness) and `service`

from tests.processes import (  # noqa: E402 - after the path set-up
    Process,
    Processes,
    clean_env,
    flask,
    free_port,
    gunicorn,
    wait_for,
    wait_ready,
)

__all__ = ["Process", "flask", "free_port", "gunicorn", "wait_for"]  # re-exported


def bench_secrets() -> dict[str, str]:
    """Explicit secrets, so the service runs as in production and instance/ is untouched
    (bearer keys of at least 32 characters, as production requires)."""
    from cryptography.fernet import Fernet

    return {
        "INGEST_API_KEYS": "ik_bench_" + secrets.token_urlsafe(24),
        "ADMIN_API_KEYS": "ak_bench_" + secrets.token_urlsafe(24),
        "PIXEL_SIGNING_KEYS": secrets.token_urlsafe(32),
        "TOKEN_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "SESSION_SECRET_KEYS": secrets.token_urlsafe(32),
    }


def service_env(db_url: str, keys: dict[str, str], **extra: object) -> dict[str, str]:
    """The environment for a service process: production mode, loopback only, no relay
    setting inherited from this shell (``tests.processes.clean_env``)."""
    env = clean_env()
    env.update(keys)
    env.update({
        "RELAY_ENV": "production",
        "DATABASE_URL": db_url,
        "HIGHLEVEL_BASE_URL": "http://127.0.0.1:9",  # discard port: nothing should call it
        "HOST": "127.0.0.1",
        "PYTHONUNBUFFERED": "1",
        # Production refuses to start without it: where this run's pixel URLs point.
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{extra.get('PORT', 8000)}",
    })
    env.update({k: str(v) for k, v in extra.items()})
    return env


def store_options(p, results: str, output_help: str | None = None) -> None:
    """The options every script has: ``--pg-url``, ``--output`` (by default
    ``bench/<results>``) and ``--keep``."""
    p.add_argument("--pg-url", default=DEFAULT_PG_URL,
                   help="PostgreSQL server to create a scratch database in ($BENCH_PG_URL)")
    p.add_argument("--output", type=Path, default=ROOT / "bench" / results, help=output_help)
    p.add_argument("--keep", action="store_true", help="keep the SQLite file / PG database")


def check_names(p, values: Iterable[str], allowed: Iterable[str], what: str) -> None:
    """An argparse error for the first of ``values`` not in ``allowed``."""
    for v in values:
        if v not in allowed:
            p.error(f"unknown {what} {v!r}")


_procs: list[Processes] = []


def processes() -> Processes:
    """This run's processes (``tests.processes.Processes``), logs under bench/out/; any
    still running when the script exits is killed with its group."""
    if not _procs:
        OUT.mkdir(parents=True, exist_ok=True)
        _procs.append(Processes(OUT, {}))
        atexit.register(_procs[0].cleanup, show_logs=False)
    return _procs[0]


def start(name: str, cmd: Sequence[str], env: dict[str, str]) -> Process:
    """Start ``cmd`` in the background with exactly ``env``; its logs are
    ``bench/out/<name>.stdout.log`` and ``.stderr.log``."""
    return processes().start(name, cmd, **env)


def run_checked(name: str, cmd: Sequence[str], env: dict[str, str], *,
                timeout: float = 120) -> str:
    """Run a short command in the project root; fail with its output unless it exits 0."""
    return processes().run(name, cmd, timeout=timeout, **env)


def log_text(proc: Process) -> str:
    return proc.stdout() + proc.stderr()


SERVICE_APP = "service:create_app()"


@contextmanager
def web_server(name: str, store, keys: dict[str, str], *, workers: int, threads: int,
               app: str = SERVICE_APP, **extra: object):
    """``app`` under gunicorn as the Procfile starts it, on a free 127.0.0.1 port, with
    WEB_CONCURRENCY x GUNICORN_THREADS; on ``store`` after ``flask --app service db
    upgrade`` (None: an app without a store). Yields ``port``, ``url``, ``env`` and
    ``web`` (the ``Process``) once /readyz answers and every worker has booted; stops it
    (SIGTERM, bounded) at the end, and sets ``stopped_in`` (seconds). Logs:
    ``bench/out/<name>.*.log``."""
    port = free_port()
    db_url = store.url if store is not None else "sqlite:///" + str(OUT / "unused.db")
    env = service_env(db_url, keys, PORT=port, WEB_CONCURRENCY=workers,
                      GUNICORN_THREADS=threads, **extra)
    if store is not None:  # idempotent; also catches a migration added since the run began
        run_checked(f"{name}-db-upgrade", flask("db", "upgrade"), env)
    url = f"http://127.0.0.1:{port}"
    server = SimpleNamespace(port=port, url=url, env=env, web=start(name, gunicorn(app=app), env))
    try:
        wait_ready(url, server.web, timeout=60, workers=workers)
        yield server
    finally:
        server.stopped_in = server.web.stop()


def child_pids(pid: int) -> list[int]:
    """The live children of ``pid`` (every thread's), from /proc; [] if it is gone."""
    try:
        return [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                for c in (task / "children").read_text().split()]
    except (OSError, ValueError):
        return []


def tree_cpu(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid`` and its live children, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    user = system = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            user += int(fields[11]) / tick
            system += int(fields[12]) / tick
        except (OSError, IndexError, ValueError):
            continue
        todo.extend(child_pids(p))
    return user, system


def process_tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used by ``pid`` and its live children, from /proc."""
    return sum(tree_cpu(pid))


def rss_kib(pid: int) -> int | None:
    """Resident set size of ``pid`` in KiB (VmRSS in /proc/<pid>/status); None if it is gone."""
    try:
        match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    except OSError:
        return None
    return int(match[1]) if match else None


# -- the run loop -------------------------------------------------------------------------

def run_matrix(outer: Iterable, run: Callable, *, notes: list[str],
               inner: Sequence = (None,), rounds: int = 1,
               where: Callable = lambda o, i, rnd: f"{o} {i}",
               describe: Callable | None = None, check: Callable | None = None,
               keep_going: bool = True) -> list[dict]:
    """Every case, side by side, in turn: for each round, for each ``outer`` value (a
    gunicorn setting, a store...), ``run(o, i, round)`` for each ``inner`` value (the
    servers, the concurrencies...; by default just None), in reverse order on even rounds
    so that none always goes first. ``run`` returns a result row (a dict) or yields
    several (one server, many loads). Each row gets its ``round``, is printed as
    ``describe(row)`` and adds ``check(row)``'s lines to ``notes``. A case that raises is
    a note, ``<where>: FAILED: <error>``, and the run goes on; with ``keep_going=False``
    the error ends the run."""
    outer = list(outer)
    rows: list[dict] = []
    for rnd in range(1, rounds + 1):
        for o in outer:
            for i in (inner if rnd % 2 else list(reversed(inner))):
                try:
                    made = run(o, i, rnd)
                    for r in ([made] if isinstance(made, dict) else made):
                        r["round"] = rnd
                        rows.append(r)
                        if describe is not None:
                            print(describe(r), flush=True)
                        if check is not None:
                            notes.extend(check(r))
                except Exception as exc:
                    if not keep_going:
                        raise
                    notes.append(f"{where(o, i, rnd)}: FAILED: {exc}")
                    print(f"  FAILED: {exc}", flush=True)
    return rows


def usable_backends(backends: list[str], pg_url: str, notes: list[str], *,
                    need_pg: bool = True) -> tuple[list[str], list[tuple[str, str]]]:
    """``backends`` less PostgreSQL (with a note) when it does not answer at ``pg_url``,
    and the machine's facts (``machine_info``, with PostgreSQL's if it is used)."""
    backends = list(backends)
    if need_pg and "postgresql" in backends and (why := postgres_reachable(pg_url)):
        notes.append(f"postgresql skipped: {why}")
        print(f"PostgreSQL not reachable at {pg_url}: {why}; skipping it", flush=True)
        backends.remove("postgresql")
    return backends, machine_info(pg_url if "postgresql" in backends else None)


def write_report(text: str, output: Path, *, marker: str | None = None,
                 also: str = "") -> None:
    """Print the report and write it to ``output``; the hand-written analysis in the old
    file, from ``marker`` on, is kept below the new numbers."""
    print()
    print(text)
    if marker and output.exists() and marker in (old := output.read_text()):
        text += "\n" + old[old.index(marker):]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    print(f"written to {output}{also}")


# -- stores ---------------------------------------------------------------------------

class Store:
    """A fresh, empty database for one run: a SQLite file, or a PostgreSQL database."""

    def __init__(self, backend: str, url: str, cleanup):
        self.backend, self.url, self._cleanup = backend, url, cleanup
        self._engine = None

    @property
    def engine(self):
        import sqlalchemy as sa

        if self._engine is None:
            self._engine = sa.create_engine(_sa_url(self.url))
        return self._engine

    def scalar(self, sql: str):
        import sqlalchemy as sa

        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql)).scalar()

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        self._cleanup()


def _sa_url(url: str) -> str:
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


@contextmanager
def fresh_store(backend: str, label: str, *, pg_url: str, keep: bool = False):
    """Yield a ``Store`` on a new SQLite file under bench/out, or a new PostgreSQL database."""
    tag = f"{label}_{uuid.uuid4().hex[:8]}"
    if backend == "sqlite":
        OUT.mkdir(parents=True, exist_ok=True)
        path = OUT / f"{tag}.db"

        def cleanup():
            if not keep:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)

        store = Store(backend, f"sqlite:///{path}", cleanup)
    elif backend == "postgresql":
        import sqlalchemy as sa
        from sqlalchemy.engine import make_url

        admin_url = make_url(_sa_url(pg_url))
        name = f"bench_{tag}"
        admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        url = admin_url.set(database=name).render_as_string(hide_password=False)

        def cleanup():
            if not keep:
                with admin.connect() as conn:
                    conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.dispose()

        store = Store(backend, url, cleanup)
    else:
        raise ValueError(f"unknown backend {backend!r}")
    try:
        yield store
    finally:
        store.close()


def postgres_reachable(pg_url: str) -> str | None:
    """None if PostgreSQL answers at ``pg_url``, else why not."""
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(_sa_url(pg_url), connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        engine.dispose()
        return None
    except Exception as exc:  # noqa: BLE001 - reported, and the backend is skipped
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"


# -- reporting ------------------------------------------------------------------------

def machine_info(pg_url: str | None) -> list[tuple[str, str]]:
    """Facts that make a number comparable: CPU, RAM, versions, disk under bench/out."""
    cpu = "unknown"
    try:
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = match[1].strip() if match else cpu
    except OSError:
        pass
    ram = "unknown"
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())[1])
        ram = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, TypeError):
        pass
    facts = [
        ("CPUs (nproc)", str(os.cpu_count())),
        ("CPU model", cpu),
        ("RAM", ram),
        ("OS", f"{platform.system()} {platform.release()}"),
        ("Python", platform.python_version()),
        ("SQLite (Python's sqlite3)", sqlite3.sqlite_version),
    ]
    if pg_url:
        try:
            import sqlalchemy as sa

            engine = sa.create_engine(_sa_url(pg_url), connect_args={"connect_timeout": 3})
            with engine.connect() as conn:
                facts.append(("PostgreSQL", conn.exec_driver_sql("SHOW server_version").scalar()))
                for name in ("synchronous_commit", "fsync", "shared_buffers"):
                    facts.append((f"PostgreSQL {name}",
                                  conn.exec_driver_sql(f"SHOW {name}").scalar()))
            engine.dispose()
        except Exception as exc:  # noqa: BLE001
            facts.append(("PostgreSQL", f"unreachable ({type(exc).__name__})"))
    try:
        from importlib.metadata import version

        facts.append(("gunicorn / Flask / SQLAlchemy / psycopg",
                      " / ".join(version(p) for p in ("gunicorn", "flask", "sqlalchemy",
                                                     "psycopg"))))
    except Exception:  # noqa: BLE001
        pass
    try:
        fs = subprocess.run(["df", "-T", str(ROOT)], capture_output=True, text=True,
                            timeout=5).stdout.splitlines()[-1].split()[1]
        facts.append(("filesystem of bench/out (SQLite files)", fs))
    except (OSError, IndexError, subprocess.SubprocessError):
        pass
    try:
        load = os.getloadavg()
        busy = load[0] > 0.5 * (os.cpu_count() or 1)
        facts.append(("load average at start", " ".join(f"{x:.2f}" for x in load)
                      + (" (BUSY: other work was running; these numbers are not "
                         "representative)" if busy else "")))
    except OSError:
        pass
    return facts


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---:" if i else "---" for i in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def facts_block(facts: list[tuple[str, str]]) -> str:
    return "\n".join(f"- {name}: {value}" for name, value in facts)


def machine_section(facts: list[tuple[str, str]], notes: list[str]) -> list[str]:
    """A report's closing lines: the machine, then the notes (if any)."""
    lines = ["## Machine", "", facts_block(facts)]
    return lines + (["", "## Notes", ""] + [f"- {n}" for n in notes] if notes else [])


def facts_for(backend: str, pg_url: str) -> list[tuple[str, str]]:
    """``machine_info`` for a run on one store, printed; exit if that store is PostgreSQL
    and it does not answer."""
    if backend == "postgresql" and (why := postgres_reachable(pg_url)):
        raise SystemExit(f"PostgreSQL not reachable at {pg_url}: {why}")
    facts = machine_info(pg_url if backend == "postgresql" else None)
    print("\n".join(f"{k}: {v}" for k, v in facts), flush=True)
    return facts


def command_line() -> str:
    """The command that produced this run, as typed from the project root."""
    script = Path(sys.argv[0]).resolve()
    shown = str(script.relative_to(ROOT)) if script.is_relative_to(ROOT) else sys.argv[0]
    return shlex.join([".venv/bin/python", shown, *sys.argv[1:]])


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = min(len(sorted_values), max(1, math.ceil(pct / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


# -- the fake HighLevel, in a process of its own ------------------------------------------

def _fake_child(options: dict, pipe) -> None:
    """Serve ``tests.fake_highlevel.FakeHighLevel`` on 127.0.0.1, obeying commands on ``pipe``."""
    sys.path.insert(0, str(ROOT))
    from tests.fake_highlevel import FakeHighLevel

    hl = FakeHighLevel(latency=options["latency"], enforce_rate_limit=options["rate_limit"],
                       validate_openapi=options["validate_openapi"])
    hl.start("127.0.0.1", options["port"])

    def patches() -> list[tuple]:
        return [(r.at, r.status, r.kind, r.document_id) for r in list(hl.requests)
                if r.method == "PATCH"]

    pipe.send({"url": hl.url, "openapi": hl.validate_openapi})
    try:
        while pipe.poll(3600):  # bounded: a parent silent for an hour is gone
            command = pipe.recv()
            if command == "stop":
                break
            if command in ("down", "up"):
                hl.set_down(command == "down")
                pipe.send("ok")
            elif command == "patches":
                pipe.send(patches())
    except (EOFError, OSError):  # the parent died
        pass
    hl.stop()
    try:
        pipe.send({"patches": patches(), "violations": list(hl.violations)[:5]})
    except OSError:
        pass


class FakeHighLevelProcess:
    """The fake HighLevel (``tests/fake_highlevel.py``) in a child process, on a fixed port.

    ``set_down(True)`` makes it answer 503 to every PATCH (after its latency, as HighLevel's
    edge would); ``refuse()`` stops the process, so nothing listens and every connection,
    kept-alive ones too, is closed; ``listen()`` starts a new one on the same port. Every
    PATCH it received is kept as ``(time.monotonic() received, status, kind, document id)``:
    the monotonic clock is the machine's, so the times compare with this process's.
    """

    def __init__(self, *, latency: float, rate_limit: bool = True,
                 validate_openapi: bool = False) -> None:
        self.options = {"latency": latency, "rate_limit": rate_limit,
                        "validate_openapi": validate_openapi, "port": free_port()}
        self.url = f"http://127.0.0.1:{self.options['port']}"
        self.violations: list[str] = []
        self._done: list[tuple] = []  # PATCHes seen by processes already stopped
        self._proc = self._pipe = None

    def start(self) -> FakeHighLevelProcess:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self._pipe, child_end = ctx.Pipe()
        self._proc = ctx.Process(target=_fake_child, args=(self.options, child_end),
                                 daemon=True, name="fake-highlevel")
        self._proc.start()
        deadline = time.monotonic() + 60
        while not self._pipe.poll(0.1):
            if not self._proc.is_alive() or time.monotonic() > deadline:
                self._kill()
                raise RuntimeError("fake HighLevel did not start (see the output above)")
        self._pipe.recv()
        return self

    listen = start

    def _call(self, command: str, timeout: float = 30.0):
        self._pipe.send(command)
        if not self._pipe.poll(timeout):
            raise RuntimeError(f"fake HighLevel did not answer {command!r} in {timeout:.0f} s")
        return self._pipe.recv()

    def set_down(self, down: bool) -> None:
        self._call("down" if down else "up")

    def patches(self) -> list[tuple]:
        return self._done + (self._call("patches") if self._proc is not None else [])

    def refuse(self) -> None:
        self.stop()

    def stop(self) -> list[tuple]:
        """Stop the process (if running); return every PATCH received so far."""
        if self._proc is not None:
            try:
                self._pipe.send("stop")
                if self._pipe.poll(30):
                    final = self._pipe.recv()
                    self._done += final["patches"]
                    self.violations += final["violations"]
            except (OSError, EOFError):
                pass
            self._kill()
        return list(self._done)

    def _kill(self) -> None:
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        self._pipe.close()
        self._proc = self._pipe = None

    def __enter__(self) -> FakeHighLevelProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- open-loop load at a steady rate ------------------------------------------------------

class PacedLoad:
    """Requests at a steady rate on 127.0.0.1: request i is due at start + i / rate.

    Open loop: a slow answer does not slow the schedule down; a request waits for a free
    connection instead, and its latency is counted from when it was due (no coordinated
    omission). ``make_request(i)`` returns ``(label, method, path, body, headers)``. Each
    result is ``(label, due, done, status, request index)`` in ``time.monotonic()``
    seconds; status 0 is no answer (connection error or timeout: the server may still have
    acted on it), -1 a request never sent because the run was over (bounded wait).
    """

    def __init__(self, port: int, make_request, *, rate: float, duration: float,
                 connections: int = 32, timeout: float = 10.0) -> None:
        import queue

        self.port, self.make_request = port, make_request
        self.rate, self.duration, self.timeout = rate, duration, timeout
        self.connections = connections
        self.results: list[tuple] = []
        self.start_at = self.end_at = 0.0
        self._queue: queue.Queue = queue.Queue()
        self._threads: list = []

    def start(self) -> PacedLoad:
        import threading

        self.start_at = time.monotonic() + 0.2
        self.end_at = self.start_at + self.duration
        self._give_up_at = self.end_at + self.timeout + 5
        self._threads = [threading.Thread(target=self._schedule, daemon=True)] + [
            threading.Thread(target=self._work, daemon=True) for _ in range(self.connections)]
        for t in self._threads:
            t.start()
        return self

    def _schedule(self) -> None:
        i = 0
        while (due := self.start_at + i / self.rate) < self.end_at:
            time.sleep(max(0.0, due - time.monotonic()))
            self._queue.put((i, due))
            i += 1
        for _ in range(self.connections):
            self._queue.put(None)

    def _work(self) -> None:
        import http.client

        conn = None
        while (item := self._queue.get()) is not None:
            i, due = item
            label, method, path, body, headers = self.make_request(i)
            if time.monotonic() > self._give_up_at:
                self.results.append((label, due, time.monotonic(), -1, i))
                continue
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                conn.request(method, path, body, headers)
                resp = conn.getresponse()
                resp.read()
                status = resp.status
            except (OSError, http.client.HTTPException):
                conn.close()
                conn, status = None, 0
            self.results.append((label, due, time.monotonic(), status, i))
        if conn is not None:
            conn.close()

    def join(self) -> list[tuple]:
        """Wait (bounded) for the schedule to end and every request to be answered."""
        deadline = self._give_up_at + self.timeout + 5
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))
        return sorted(self.results, key=lambda r: r[1])


def per_second(times: list[float], origin: float, seconds: float) -> list[int]:
    """How many of ``times`` fall in each whole second after ``origin``, for ``seconds``."""
    counts = [0] * max(1, math.ceil(seconds))
    for t in times:
        k = int(t - origin)
        if 0 <= k < len(counts):
            counts[k] += 1
    return counts


# -- the relay's side ---------------------------------------------------------------------

def put_tokens(base_url: str, admin_key: str, tokens: dict[str, str]) -> None:
    """Store each location's token through the admin API (``PUT /v1/locations/<id>/token``)."""
    import json

    for location, token in tokens.items():
        req = urllib.request.Request(
            f"{base_url}/v1/locations/{location}/token", method="PUT",
            data=json.dumps({"accessToken": token}).encode(),
            headers={"Authorization": f"Bearer {admin_key}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            if resp.status != 200:
                raise RuntimeError(f"PUT token for {location}: HTTP {resp.status}")


def event_counts(store: Store) -> dict[str, int]:
    """Views stored (a client's repeats count on one row: ``events.views``), those to
    forward, and those HighLevel has been told of (the store's
    own rule, as ``GET /v1/events/<id>`` answers ``delivered``: seq <= the document's
    sent_seq)."""
    import sqlalchemy as sa

    with store.engine.connect() as conn:
        row = conn.execute(sa.text(
            "SELECT coalesce(sum(e.views), 0), "
            "       coalesce(sum(CASE WHEN e.forward THEN e.views ELSE 0 END), 0), "
            "       coalesce(sum(CASE WHEN e.forward AND e.seq <= d.sent_seq "
            "                    THEN e.views ELSE 0 END), 0) "
            "FROM events e LEFT JOIN documents d ON d.id = e.document_row")).one()
    return {"stored": int(row[0]), "forward": int(row[1]), "delivered": int(row[2])}


def wait_delivered(store: Store, *, timeout: float, poll: float = 0.5,
                   alive=lambda: True) -> tuple[dict[str, int], float | None]:
    """Poll until every view to forward is delivered; return the counts and when
    (``time.monotonic()``), or None on timeout or when ``alive()`` turns false."""
    deadline = time.monotonic() + timeout
    while True:
        counts = event_counts(store)
        if counts["delivered"] >= counts["forward"]:
            return counts, time.monotonic()
        if time.monotonic() >= deadline or not alive():
            return counts, None
        time.sleep(poll)


def report_head(title: str, *, started, short: bool) -> list[str]:
    """A report's first lines: its title, a banner if the run was shorter than the
    documented full length, when it ran and the exact command."""
    banner = ["**SHORT VALIDATION RUN: durations below the defaults; these numbers show "
              "that the script works, not what the service can do.**", ""] if short else []
    return [f"# {title}", "", *banner, f"Run {started:%Y-%m-%d %H:%M} UTC with:", "",
            f"    {command_line()}", ""]


def relative_to(path: Path, report: Path) -> Path:
    """``path`` as a link from the report ``report`` (relative when beside or below it)."""
    try:
        return path.relative_to(report.parent)
    except ValueError:
        return path


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextmanager
def relay_processes(store: Store, keys: dict[str, str], *, label: str, highlevel_url: str,
                    workers: int, threads: int, tokens: dict[str, str] | None = None,
                    **extra: str):
    """The relay as the Procfile runs it, on ``store``: ``db upgrade``, gunicorn on a free
    loopback port (``web_server``), each location's token stored through the admin API,
    then one forwarder sending to ``highlevel_url`` (waited for until it logs
    ``forwarder.started``). Yields an object with ``port``, ``url``, ``web`` and
    ``forwarder`` (``Process``); stops the forwarder, then gunicorn (SIGTERM, bounded)."""
    with web_server(f"{label}-gunicorn", store, keys, workers=workers, threads=threads,
                    HIGHLEVEL_BASE_URL=highlevel_url, **extra) as server:
        put_tokens(server.url, keys["ADMIN_API_KEYS"].split(",")[0], tokens or {})
        fwd = start(f"{label}-forwarder", flask("forwarder"), server.env)
        try:
            def started() -> bool:
                assert fwd.running(), f"forwarder exited:\n{fwd.tail()}"
                return "forwarder.started" in fwd.stdout()

            wait_for(started, timeout=60, what="forwarder.started")
            yield SimpleNamespace(port=server.port, url=server.url, web=server.web,
                                  forwarder=fwd)
        finally:
            fwd.stop()


# -- a backlog for the forwarder ----------------------------------------------------------

def preload_backlog(store: Store, keys: dict[str, str], *, locations: int, documents: int,
                    token: Callable[[int], str]) -> None:
    """Store location n's token ``token(n)`` with the service's ``TokenVault`` and one due
    view for each of ``documents`` documents (every tenth an estimate, locations
    interleaved, as traffic would be) with ``Store.record_views``, in this process; fail
    unless exactly that many documents are then due."""
    import datetime as dt

    from service.store.engine import create_engine
    from service.store.queue import Store as Queue
    from service.store.queue import View
    from service.store.tokens import TokenVault

    engine = create_engine(store.url)
    try:
        vault = TokenVault(engine, [keys["TOKEN_ENCRYPTION_KEYS"]])
        now = dt.datetime.now(dt.UTC)
        for n in range(locations):
            vault.set_token(f"loc-{n:03d}", access_token=token(n), now=now)
        queue = Queue(engine)
        views = [View(kind="estimate" if i % 10 == 9 else "invoice",
                      location_id=f"loc-{i % locations:03d}",
                      document_id=f"doc-{i:06d}", viewed_at=now, source="bench")
                 for i in range(documents)]
        for first in range(0, len(views), 500):
            queue.record_views(views[first:first + 500], now=now)
    finally:
        engine.dispose()
    due = store.scalar("SELECT count(*) FROM documents WHERE status = 'pending'")
    if due != documents:
        raise RuntimeError(f"preloaded {due} due documents, wanted {documents}")


def wait_documents_delivered(store: Store, forwarder: Process, documents: int, *,
                             deadline: float, interval: float,
                             each: Callable[[int], None] | None = None
                             ) -> tuple[int, float | None]:
    """Poll the store every ``interval`` s until ``documents`` documents are delivered
    (idle, ``sent_seq >= views_seq``) or ``deadline`` (``time.monotonic()``) passes; call
    ``each(delivered)`` at every poll. Returns the count and when it was reached (None:
    not in time); fails if the forwarder exits first."""
    delivered = 0
    while time.monotonic() < deadline:
        delivered = store.scalar("SELECT count(*) FROM documents WHERE status = 'idle' "
                                 "AND sent_seq >= views_seq")
        if delivered >= documents:
            return delivered, time.monotonic()
        if not forwarder.running():
            raise RuntimeError(f"forwarder exited early:\n{forwarder.tail()}")
        if each is not None:
            each(delivered)
        time.sleep(interval)
    return delivered, None
