"""Shared plumbing for the benchmarks: fresh stores, service processes, machine facts.

Nothing here talks to anything but 127.0.0.1. Every wait is bounded.
"""

from __future__ import annotations

import math
import os
import platform
import re
import secrets
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"  # logs and SQLite files (git-ignored)
DEFAULT_PG_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    """A free TCP port on loopback (the usual small race; fine for a benchmark)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bench_secrets() -> dict[str, str]:
    """Explicit secrets, so the service runs as in production and instance/ is untouched."""
    from cryptography.fernet import Fernet

    return {
        "INGEST_API_KEYS": "ik_bench_" + secrets.token_urlsafe(18),
        "ADMIN_API_KEYS": "ak_bench_" + secrets.token_urlsafe(18),
        "PIXEL_SIGNING_KEYS": secrets.token_urlsafe(32),
        "TOKEN_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
    }


def service_env(db_url: str, keys: dict[str, str], **extra: str) -> dict[str, str]:
    """The environment for a service process: production mode, loopback only."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "FLASK_APP", "HIGHLEVEL_BASE_URL")}
    env.update(keys)
    env.update({
        "RELAY_ENV": "production",
        "DATABASE_URL": db_url,
        "HIGHLEVEL_BASE_URL": "http://127.0.0.1:9",  # discard port: nothing should call it
        "HOST": "127.0.0.1",
        "PYTHONUNBUFFERED": "1",
    })
    env.update({k: str(v) for k, v in extra.items()})
    return env


def bin_path(name: str) -> str:
    """A console script of this interpreter's environment (the project's venv)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def flask_cmd(*args: str) -> list[str]:
    return [bin_path("flask"), "--app", "service", *args]


def gunicorn_cmd() -> list[str]:
    return [bin_path("gunicorn"), "--config", "config/gunicorn.conf.py", "service:create_app()"]


def run_checked(cmd: list[str], env: dict[str, str], *, timeout: float = 120) -> str:
    """Run a short command in the project root; raise with its output if it fails."""
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}):\n"
                           f"{proc.stdout}\n{proc.stderr}")
    return proc.stdout


class Proc:
    """A background process in its own session, its output in a log file."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log: Path):
        log.parent.mkdir(parents=True, exist_ok=True)
        self.name, self.cmd, self.log = name, cmd, log
        self._fh = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._fh,
                                      stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 35.0) -> float:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL its group; return seconds taken."""
        started = time.monotonic()
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"  {self.name} did not exit in {timeout:.0f}s; killing it", flush=True)
                try:
                    os.killpg(self.popen.pid, signal.SIGKILL)  # its own group only
                except ProcessLookupError:
                    pass
                self.popen.wait(10)
        self._fh.close()
        return time.monotonic() - started

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def wait_ready(base_url: str, proc: Proc, *, timeout: float = 60.0) -> None:
    """Poll ``/readyz`` until 200; raise (with the log tail) on timeout or exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited early:\n{proc.tail()}")
        try:
            with urllib.request.urlopen(base_url + "/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name} not ready after {timeout:.0f}s:\n{proc.tail()}")


def process_tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used by ``pid`` and its live children, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{p}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, IndexError, ValueError):
            continue
    return total


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
