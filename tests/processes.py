"""Real subprocesses for the end-to-end tests (and the benchmarks, bench/common.py):
started with logs in files, always reaped.

Each process runs in its own session (``start_new_session``), so its whole process group
(gunicorn's master and workers) can be signalled, and killed, at once.

Also what the end-to-end and reliability tests share: the settings every process gets,
``Relay`` (the running service as a client sees it) and ``count_views``, which checks
the store against what the fake HighLevel received.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import requests
import sqlalchemy as sa
from cryptography.fernet import Fernet

from service.config import SETTINGS
from service.store.db import delivery_log, documents, events
from service.store.engine import create_engine, read_only

from .fake_highlevel import FakeHighLevel, ReceivedRequest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv's console scripts: flask, gunicorn

# At least 32 characters, as production requires (service/config.py).
INGEST_KEY = "ik_e2e_" + secrets.token_urlsafe(24)
ADMIN_KEY = "ak_e2e_" + secrets.token_urlsafe(24)
PIXEL_KEY = secrets.token_urlsafe(32)
FERNET_KEY = Fernet.generate_key().decode()
SESSION_KEY = secrets.token_urlsafe(32)  # signs the console's session cookie
HL_TOKEN = "pit-e2e-" + secrets.token_hex(16)  # LOCATION's HighLevel token
PARKED_TOKEN = "pit-e2e-" + secrets.token_hex(16)  # PARKED's, stored late
SECRETS = (INGEST_KEY, ADMIN_KEY, PIXEL_KEY, FERNET_KEY, SESSION_KEY, HL_TOKEN, PARKED_TOKEN)
WINDOW = 3  # COALESCE_WINDOW_SECONDS
LOCATION = "loc_e2e"
PARKED = "loc_parked"  # has no token until the test stores one
STOP_WITHIN = 30.0  # DESIGN.md: a forwarder exits within 30 s of SIGTERM


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], object], *, timeout: float, interval: float = 0.1,
             what: str = "condition") -> object:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class Process:
    """One subprocess with stdout and stderr in files under ``log_dir``."""

    def __init__(self, name: str, args: Sequence[str], *, env: Mapping[str, str],
                 log_dir: Path, cwd: Path = ROOT):
        self.name = name
        self.args = list(args)
        self.stdout_path = log_dir / f"{name}.stdout.log"
        self.stderr_path = log_dir / f"{name}.stderr.log"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            # The child keeps its own copies of the descriptors; ours close at once.
            self.popen = subprocess.Popen(self.args, cwd=cwd, env=dict(env), stdout=out,
                                          stderr=err, stdin=subprocess.DEVNULL,
                                          start_new_session=True)
        self.pid = self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def running(self) -> bool:
        return self.popen.poll() is None

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the process itself (not its group)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """Wait for the exit code; raise ``subprocess.TimeoutExpired`` after ``timeout``."""
        return self.popen.wait(timeout=timeout)

    def group_alive(self) -> bool:
        """Whether any process is left in this process's group (e.g. orphaned workers)."""
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # pragma: no cover - a recycled id owned by someone else
            return False
        return True

    def children(self) -> list[int]:
        """The ids of this process's children (gunicorn's workers), from /proc."""
        try:
            return [int(pid) for pid in
                    Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()]
        except FileNotFoundError:  # exited
            return []

    def stop(self, timeout: float = STOP_WITHIN + 5) -> float:
        """SIGTERM; if it has not exited within ``timeout``, SIGKILL its group. Returns the
        seconds it took (lenient, unlike ``stop_cleanly``: for the benchmarks)."""
        started = time.monotonic()
        self.signal(signal.SIGTERM)
        try:
            self.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"{self.name} did not exit {timeout:.0f}s after SIGTERM; killing it",
                  file=sys.stderr)
            self.kill_group()
        return time.monotonic() - started

    def tail(self, lines: int = 20) -> str:
        """The last ``lines`` of stdout, then of stderr: for an error message."""
        return "\n".join(text for log in (self.stdout(), self.stderr())
                         if (text := "\n".join(log.splitlines()[-lines:])))

    def kill_group(self) -> None:
        """SIGKILL the process and everything in its group, then reap it."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - unkillable: report, move on
            print(f"{self.name} (pid {self.pid}) did not die after SIGKILL", file=sys.stderr)

    def report(self) -> str:
        """Command, exit code and both logs, for a failing test's captured output."""
        return (f"===== {self.name} (pid {self.pid}, exit {self.popen.poll()}): "
                f"{' '.join(self.args)}\n"
                f"----- stdout\n{self.stdout()}\n----- stderr\n{self.stderr()}\n")


class Processes:
    """Start processes for one test; ``cleanup`` kills stragglers and prints every log."""

    def __init__(self, log_dir: Path, env: Mapping[str, str]):
        self.log_dir = log_dir
        self.env = dict(env)
        self.started: list[Process] = []
        self._names: dict[str, int] = {}

    def start(self, name: str, args: Sequence[str], **env: str) -> Process:
        count = self._names.get(name, 0) + 1
        self._names[name] = count
        unique = name if count == 1 else f"{name}-{count}"
        proc = Process(unique, args, env={**self.env, **env}, log_dir=self.log_dir)
        self.started.append(proc)
        return proc

    def run(self, name: str, args: Sequence[str], *, timeout: float = 60, **env: str) -> str:
        """Run a command to completion; fail (with its output) unless it exits 0."""
        proc = self.start(name, args, **env)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill_group()
            raise AssertionError(
                f"{name} still running after {timeout}s\n{proc.report()}") from None
        assert code == 0, f"{name} exited {code}\n{proc.report()}"
        return proc.stdout()

    def cleanup(self, *, show_logs: bool = True) -> None:
        for proc in self.started:
            if proc.running() or proc.group_alive():
                print(f"killing straggler {proc.name} (pid {proc.pid})", file=sys.stderr)
                proc.kill_group()
            else:
                proc.wait(0)  # already exited: reap (poll() did), keeps Popen quiet
        for proc in self.started if show_logs else ():
            print(proc.report())


def flask(*args: str) -> list[str]:
    """The ``flask --app service ...`` command line in this venv."""
    return [str(BIN / "flask"), "--app", "service", *args]


def gunicorn(*args: str, app: str = "service:create_app()") -> list[str]:
    """The web process exactly as the Procfile starts it (``app``: another app, e.g. the
    benchmarks' bare one, under the same gunicorn config)."""
    return [str(BIN / "gunicorn"), "--config", "config/gunicorn.conf.py", *args, app]


def haproxy(binary: str, config: Path) -> list[str]:
    """HAProxy in the foreground (logs on stdout) on ``config``, as `make run-lb` runs it."""
    return [binary, "-db", "-f", str(config)]


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module (scripts/ is not a package), to use its functions."""
    spec = importlib.util.spec_from_file_location(f"scripts.{name}",
                                                  ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Relay:
    """The running service: web (gunicorn) and worker (forwarder) processes, one HTTP session."""

    procs: Processes
    url: str
    session: requests.Session
    web: Process | None = None
    forwarders: list[Process] = field(default_factory=list)

    @property
    def forwarder(self) -> Process:
        return self.forwarders[-1]

    def start_forwarder(self) -> Process:
        proc = self.procs.start("forwarder", flask("forwarder"))
        self.forwarders.append(proc)
        return proc

    def start_web(self, port: int) -> Relay:
        """Another machine behind the load balancer: its own gunicorn master on ``port``,
        on the same store, sharing this relay's forwarders; returned once it is ready."""
        other = Relay(self.procs, f"http://127.0.0.1:{port}", self.session,
                      forwarders=self.forwarders)
        other.web = self.procs.start("gunicorn", gunicorn(), PORT=str(port))
        other.wait_ready()
        return other

    def request(self, method: str, path: str, *, key: str = INGEST_KEY,
                body: object = None) -> tuple[int, object]:
        with self.session.request(method, self.url + path, json=body, timeout=10,
                                  headers={"Authorization": f"Bearer {key}"}) as resp:
            return resp.status_code, (resp.json() if resp.content else None)

    def post_events(self, body: dict) -> dict:
        status, answer = self.request("POST", "/v1/events", body=body)
        assert status == 202, answer
        return answer

    def store_token(self, location_id: str, token: str = HL_TOKEN) -> dict:
        status, answer = self.request("PUT", f"/v1/locations/{location_id}/token",
                                      key=ADMIN_KEY, body={"accessToken": token})
        assert status == 200, answer
        return answer

    def event(self, event_id: str) -> dict:
        status, answer = self.request("GET", f"/v1/events/{event_id}")
        assert status == 200, answer
        return answer

    def wait_delivered(self, *event_ids: str, timeout: float = 20.0) -> list[dict]:
        """Poll until every event is ``delivered``; fail on ``failed`` or after ``timeout``."""
        def check():
            states = [self.event(i) for i in event_ids]
            failed = [s for s in states if s["status"] == "failed"]
            assert not failed, failed
            return states if all(s["status"] == "delivered" for s in states) else None

        return wait_for(check, timeout=timeout, interval=0.1,
                        what=f"delivery of {len(event_ids)} event(s)")

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until /readyz answers 200 and every gunicorn worker has booted."""
        wait_ready(self.url, self.web, timeout=timeout, session=self.session,
                   workers=int(self.procs.env["WEB_CONCURRENCY"]))


def wait_ready(url: str, web: Process, *, timeout: float = 30.0, workers: int = 0,
               session: requests.Session | None = None) -> None:
    """Until ``url``/readyz answers 200 and (if given) ``workers`` gunicorn workers have
    booted; fail at once if the gunicorn process ``web`` exits."""
    get = (session or requests).get

    def ready():
        assert web.running(), f"{web.name} exited {web.returncode}:\n{web.tail()}"
        try:
            with get(url + "/readyz", timeout=5) as resp:
                return resp.status_code == 200
        except (requests.ConnectionError, requests.Timeout):
            return False  # not listening yet, or a worker still importing the app

    wait_for(ready, timeout=timeout, interval=0.1, what=f"GET {url}/readyz 200")
    # Every worker booted (each would answer /readyz on its own).
    wait_for(lambda: web.stdout().count("Booting worker") >= workers, timeout=20,
             what=f"{workers} gunicorn workers")


def clean_env() -> dict[str, str]:
    """This process's environment without any relay, Flask or gunicorn setting, so a
    process started with it runs on the settings it is given and the defaults only."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("FLASK_", "GUNICORN_")) and k not in {s.name for s in SETTINGS}}


def base_env(db_url: str, hl_url: str, port: int) -> dict[str, str]:
    """The environment every process gets: ours, with no stray relay settings inherited."""
    env = clean_env()
    env.update({
        "DATABASE_URL": db_url,
        "RELAY_ENV": "test",
        "INGEST_API_KEYS": INGEST_KEY,
        "ADMIN_API_KEYS": ADMIN_KEY,
        "PIXEL_SIGNING_KEYS": PIXEL_KEY,
        "TOKEN_ENCRYPTION_KEYS": FERNET_KEY,
        "SESSION_SECRET_KEYS": SESSION_KEY,
        "HIGHLEVEL_BASE_URL": hl_url,
        "HOST": "127.0.0.1",  # gunicorn binds loopback only
        "PORT": str(port),
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "WEB_CONCURRENCY": "2",
        "COALESCE_WINDOW_SECONDS": str(WINDOW),
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
        "FLASK_SKIP_DOTENV": "1",  # a developer's .env must not change what is tested
    })
    return env


def stop_cleanly(*procs: Process) -> None:
    """SIGTERM each process; each must exit 0 within STOP_WITHIN and leave no process behind."""
    for proc in procs:
        proc.signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_WITHIN
    for proc in procs:
        try:
            code = proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{proc.name} still running {STOP_WITHIN:g}s after SIGTERM") from None
        assert code == 0, f"{proc.name} exited {code} after SIGTERM"
        wait_for(lambda p=proc: not p.group_alive(), timeout=5,
                 what=f"{proc.name}'s children to exit")


def json_lines(text: str) -> list[dict]:
    """The JSON log records in a process's stdout (the CLI's final echo is plain text)."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def attempts(proc: Process) -> list[dict]:
    return [r for r in json_lines(proc.stdout()) if r.get("event") == "delivery.attempt"]


def patches_for(fake: FakeHighLevel, document_id: str) -> list[ReceivedRequest]:
    return [r for r in list(fake.requests) if r.document_id == document_id]


def assert_no_secret_logged(*procs: Process) -> None:
    for proc in procs:
        logs = proc.stdout() + proc.stderr()
        leaked = [i for i, s in enumerate(SECRETS) if s in logs]
        assert not leaked, f"{proc.name} logged secret(s) #{leaked}"


@dataclass(frozen=True)
class ViewCount:
    """Where the stored views stand (``count_views``); ``stored`` is the sum of the rest."""

    stored: int
    delivered: int
    pending: int
    failed: int


def count_views(db_url: str, fake: FakeHighLevel, *, accepted: Iterable[str] = ()) -> ViewCount:
    """Check that no view is lost or half-written, in the store and at HighLevel; count them.

    Fails unless: every ``accepted`` event id is stored; each document's views carry the
    sequence numbers 1..views_seq exactly once (a view counted without its event row, or
    the reverse, breaks this); each document's delivered mark is backed by a delivery
    logged with a 200 and each logged 200 by a PATCH HighLevel answered 200 (more
    PATCHes than logged deliveries is at-least-once: a send whose answer was lost).
    Then each stored view is delivered (seq <= sent_seq), failed, or still pending.
    """
    engine = create_engine(db_url)
    conn = read_only(engine)  # SQLite: one deferred transaction, one snapshot for all reads
    if engine.dialect.name == "postgresql":  # one snapshot there too
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
    try:
        with conn:
            e, d, log = events.c, documents.c, delivery_log.c
            views = conn.execute(sa.select(e.id, e.document_row, e.seq, e.forward,
                                           e.views)).all()
            docs = {r.id: r for r in conn.execute(sa.select(
                d.id, d.document_id, d.views_seq, d.sent_seq, d.failed_seq))}
            logged = conn.execute(sa.select(log.document_row, log.seq_to).where(
                log.outcome == "delivered", log.http_status == 200)).all()
    finally:
        engine.dispose()
    missing = set(accepted) - {v.id for v in views}
    assert not missing, f"{len(missing)} accepted event(s) not in the store: {sorted(missing)[:5]}"
    assert all(v.forward for v in views), "a test view was filtered (a machine open?)"
    seqs: dict[int, list[int]] = defaultdict(list)
    for v in views:
        seqs[v.document_row].append(v.seq)
    for row_id, doc in docs.items():
        assert sorted(seqs[row_id]) == list(range(1, doc.views_seq + 1)), \
            f"{doc.document_id}: views_seq {doc.views_seq}, event seqs {sorted(seqs[row_id])}"
    assert set(seqs) <= set(docs), "events pointing at no document row"
    logged_to: dict[int, int] = defaultdict(int)
    for row in logged:
        logged_to[row.document_row] = max(logged_to[row.document_row], row.seq_to)
    patched = Counter(r.document_id for r in list(fake.requests)
                      if r.method == "PATCH" and r.status == 200)
    logged_count = Counter(docs[r.document_row].document_id for r in logged)
    for row_id, doc in docs.items():
        assert logged_to[row_id] == doc.sent_seq, \
            f"{doc.document_id}: sent_seq {doc.sent_seq}, logged 200s up to {logged_to[row_id]}"
        assert patched[doc.document_id] >= logged_count[doc.document_id], \
            (f"{doc.document_id}: {logged_count[doc.document_id]} deliveries logged, "
             f"HighLevel answered {patched[doc.document_id]} PATCH(es) with 200")
    delivered = failed = pending = 0  # views: a client's repeats count on its row
    for v in views:
        doc = docs[v.document_row]
        if v.seq <= doc.sent_seq:
            delivered += v.views
        elif v.seq <= doc.failed_seq:
            failed += v.views
        else:
            pending += v.views
    return ViewCount(sum(v.views for v in views), delivered, pending, failed)
