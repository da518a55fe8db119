"""Service processes for the benchmarks: their secrets and environment, a gunicorn of
the relay, and what a process tree costs (CPU, memory)."""

from __future__ import annotations

import atexit
import os
import re
import secrets
import sys
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]  # the repository
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
               app: str = SERVICE_APP, gunicorn_args: Sequence[str] = (), **extra: object):
    """``app`` under gunicorn as the Procfile starts it, on a free 127.0.0.1 port, with
    WEB_CONCURRENCY x GUNICORN_THREADS; on ``store`` after ``flask --app service db
    upgrade`` (None: an app without a store). Yields ``port``, ``url``, ``env`` and
    ``web`` (the ``Process``) once /readyz answers and every worker has booted; stops it
    (SIGTERM, bounded) at the end, and sets ``stopped_in`` (seconds). ``gunicorn_args``
    come after the shipped ``--config`` (a later ``--config`` wins). Logs:
    ``bench/out/<name>.*.log``."""
    port = free_port()
    db_url = store.url if store is not None else "sqlite:///" + str(OUT / "unused.db")
    env = service_env(db_url, keys, PORT=port, WEB_CONCURRENCY=workers,
                      GUNICORN_THREADS=threads, **extra)
    if store is not None:  # idempotent; also catches a migration added since the run began
        run_checked(f"{name}-db-upgrade", flask("db", "upgrade"), env)
    url = f"http://127.0.0.1:{port}"
    web = start(name, gunicorn(*gunicorn_args, app=app), env)
    server = SimpleNamespace(port=port, url=url, env=env, web=web)
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
