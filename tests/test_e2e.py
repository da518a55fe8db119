"""End to end: real gunicorn and forwarder processes, real HTTP, the fake HighLevel on loopback.

Each test migrates a fresh store (SQLite file, or a private PostgreSQL schema) with
``flask db upgrade``, starts ``gunicorn`` (2 workers) and ``flask forwarder`` the way the
Procfile does, configured only through the environment, and talks to them with
``requests`` on 127.0.0.1. Process logs go to files under ``tmp_path`` and are printed at
teardown, so a failing test shows them.

Two stacks per backend (process start-up dominates the run time): delivery, coalescing,
a location parked without a token, and a clean SIGTERM in one; kill -9 mid-send, then a
SIGTERM mid-send, in the other.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import requests
from cryptography.fernet import Fernet

from service.config import SETTINGS

from .fake_highlevel import FakeHighLevel, ReceivedRequest
from .processes import Process, Processes, flask, free_port, gunicorn, wait_for

pytestmark = pytest.mark.e2e

INGEST_KEY = "ik_e2e_" + secrets.token_urlsafe(18)
ADMIN_KEY = "ak_e2e_" + secrets.token_urlsafe(18)
PIXEL_KEY = secrets.token_urlsafe(32)
FERNET_KEY = Fernet.generate_key().decode()
HL_TOKEN = "pit-e2e-" + secrets.token_hex(16)  # LOCATION's HighLevel token
PARKED_TOKEN = "pit-e2e-" + secrets.token_hex(16)  # PARKED's, stored late
SECRETS = (INGEST_KEY, ADMIN_KEY, PIXEL_KEY, FERNET_KEY, HL_TOKEN, PARKED_TOKEN)
WINDOW = 3  # COALESCE_WINDOW_SECONDS
LOCATION = "loc_e2e"
PARKED = "loc_parked"  # has no token until the test stores one
STOP_WITHIN = 30.0  # DESIGN.md: a forwarder exits within 30 s of SIGTERM


@pytest.fixture
def fake() -> Iterator[FakeHighLevel]:
    """The fake HighLevel, accepting only our tokens; it must see no contract violation."""
    server = FakeHighLevel(tokens={HL_TOKEN, PARKED_TOKEN}, enforce_rate_limit=False).start()
    try:
        yield server
    finally:
        server.stop()
    assert server.violations == [], server.violations


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
        def ready():
            assert self.web.running(), f"gunicorn exited {self.web.returncode}"
            try:
                with self.session.get(self.url + "/readyz", timeout=5) as resp:
                    return resp.status_code == 200
            except (requests.ConnectionError, requests.Timeout):
                return False  # not listening yet, or a worker still importing the app

        wait_for(ready, timeout=timeout, interval=0.1, what="GET /readyz 200")


def base_env(db_url: str, hl_url: str, port: int) -> dict[str, str]:
    """The environment every process gets: ours, with no stray relay settings inherited."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FLASK_", "GUNICORN_")) and k not in {s.name for s in SETTINGS}}
    env.update({
        "DATABASE_URL": db_url,
        "RELAY_ENV": "test",
        "INGEST_API_KEYS": INGEST_KEY,
        "ADMIN_API_KEYS": ADMIN_KEY,
        "PIXEL_SIGNING_KEYS": PIXEL_KEY,
        "TOKEN_ENCRYPTION_KEYS": FERNET_KEY,
        "HIGHLEVEL_BASE_URL": hl_url,
        "HOST": "127.0.0.1",  # gunicorn binds loopback only
        "PORT": str(port),
        "WEB_CONCURRENCY": "2",
        "COALESCE_WINDOW_SECONDS": str(WINDOW),
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
        "FLASK_SKIP_DOTENV": "1",  # a developer's .env must not change what is tested
    })
    return env


@pytest.fixture
def start_relay(db_url, fake, tmp_path) -> Iterator[Callable[..., Relay]]:
    """Return ``start(**env)``: migrate, start gunicorn and a forwarder, wait until ready."""
    port = free_port()
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    run_dir = tmp_path / "run"  # gunicorn >= 25.1 puts its control socket here, not in ~
    run_dir.mkdir(mode=0o700)
    # TMPDIR: where gunicorn makes its metrics directory; under tmp_path even if it is killed.
    procs = Processes(log_dir, {**base_env(db_url, fake.url, port),
                                "XDG_RUNTIME_DIR": str(run_dir), "TMPDIR": str(run_dir)})
    session = requests.Session()
    relay = Relay(procs, f"http://127.0.0.1:{port}", session)

    def start(**env: str) -> Relay:
        procs.env.update(env)
        out = procs.run("db-upgrade", flask("db", "upgrade"), timeout=60)
        assert "database at revision" in out, out
        relay.web = procs.start("gunicorn", gunicorn())
        relay.start_forwarder()
        relay.wait_ready()
        # Both workers booted (each would answer /readyz on its own).
        wait_for(lambda: relay.web.stdout().count("Booting worker") >= 2, timeout=20,
                 what="2 gunicorn workers")
        return relay

    try:
        yield start
    finally:
        session.close()
        procs.cleanup()


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


def test_delivers_coalesces_parks_and_stops_cleanly(start_relay, fake):
    relay = start_relay()
    summary = relay.store_token(LOCATION)
    assert summary["tokenKind"] == "pit" and summary["status"] == "active"
    assert HL_TOKEN not in json.dumps(summary)

    # A view for a location without a token waits (blocked), and delays no other location.
    parked = relay.post_events({"locationId": PARKED, "invoiceId": "inv_parked"})
    assert parked["status"] == "queued"
    single = relay.post_events({"locationId": LOCATION, "invoiceId": "inv_single",
                                "eventId": "evt-single-1", "source": "e2e"})
    assert single["status"] == "queued"
    batch = relay.post_events({"events": [
        {"locationId": LOCATION, "invoiceId": "inv_batch"},
        {"locationId": LOCATION, "estimateId": "est_batch"},
        *({"locationId": LOCATION, "invoiceId": "inv_multi"} for _ in range(3)),
    ]})["events"]
    assert [e["status"] for e in batch] == ["queued"] * 5
    first_ids = [single["id"], *(e["id"] for e in batch)]
    states = relay.wait_delivered(*first_ids)
    assert all(s["deliveredAt"] for s in states)

    # Two more views of inv_multi inside the window after its first PATCH: one more PATCH,
    # at the end of the window, covers both.
    first_multi = patches_for(fake, "inv_multi")
    assert len(first_multi) == 1  # one PATCH covered the batch's 3 views
    later = [relay.post_events({"locationId": LOCATION, "invoiceId": "inv_multi"})["id"]
             for _ in range(2)]
    assert time.monotonic() - first_multi[0].at < WINDOW, "too slow to test coalescing"
    # A repeated eventId is answered from the first event and sends nothing more.
    again = relay.post_events({"locationId": LOCATION, "invoiceId": "inv_single",
                               "eventId": "evt-single-1"})
    assert again == {"id": single["id"], "status": "duplicate"}

    def is_blocked():
        state = relay.event(parked["id"])
        assert state["status"] == "queued", state
        return state.get("reason") == "blocked"

    wait_for(is_blocked, timeout=10, what="the view without a token to be parked")
    assert relay.request("GET", f"/v1/locations/{PARKED}", key=ADMIN_KEY)[0] == 404
    assert patches_for(fake, "inv_parked") == []
    relay.store_token(PARKED, PARKED_TOKEN)  # releases the parked view
    relay.wait_delivered(parked["id"], *later)

    multi = patches_for(fake, "inv_multi")
    assert len(multi) == 2, [r.at for r in multi]
    assert multi[1].at - multi[0].at >= WINDOW - 0.3, "second PATCH before the window ended"
    assert [len(patches_for(fake, d)) for d in ("inv_single", "inv_batch", "est_batch",
                                                 "inv_parked")] == [1, 1, 1, 1]
    estimate = patches_for(fake, "est_batch")[0]
    assert (estimate.kind, estimate.json) == ("estimate", {"estimateId": "est_batch"})
    # Each PATCH carried its own location's stored token, and HighLevel accepted it.
    assert all(r.method == "PATCH" and r.status == 200 for r in fake.requests)
    assert [r.token for r in fake.requests if r.document_id != "inv_parked"] == \
        [HL_TOKEN] * (len(fake.requests) - 1)
    assert patches_for(fake, "inv_parked")[0].token == PARKED_TOKEN

    stop_cleanly(relay.web, relay.forwarder)
    assert len(patches_for(fake, "inv_multi")) == 2  # nothing more was sent

    # One JSON line per attempt; the HTTP ones match what HighLevel received.
    logged = attempts(relay.forwarder)
    sent = [r for r in logged if r["outcome"] == "delivered"]
    assert all(r["http_status"] == 200 for r in sent)
    assert sorted(r["document_id"] for r in sent) == \
        sorted(r.document_id for r in fake.requests)
    assert sorted(r["views"] for r in sent if r["document_id"] == "inv_multi") == [2, 3]
    assert [r["outcome"] for r in logged if r["document_id"] == "inv_parked"] == \
        ["no_token", "delivered"]
    assert {r["location_id"] for r in logged} == {LOCATION, PARKED}
    events = [r["event"] for r in json_lines(relay.forwarder.stdout())]
    assert events[0] == "forwarder.started" and events[-1] == "forwarder.stopped"
    assert_no_secret_logged(relay.web, relay.forwarder)


def test_killed_forwarder_loses_nothing(start_relay, fake):
    lease = 3
    fake.latency = 3.0  # each PATCH is received at once and answered 3 s later
    relay = start_relay(LEASE_SECONDS=str(lease))
    relay.store_token(LOCATION)
    docs = ["inv_k1", "inv_k2", "est_k3"]
    accepted = relay.post_events({"events": [
        {"locationId": LOCATION, "invoiceId": "inv_k1"},
        {"locationId": LOCATION, "invoiceId": "inv_k2"},
        {"locationId": LOCATION, "estimateId": "est_k3"},
    ]})["events"]
    ids = [e["id"] for e in accepted]

    def in_flight(count: int) -> bool:
        return len(fake.requests) == count

    wait_for(lambda: in_flight(len(docs)), timeout=10, what="HighLevel to receive every PATCH")
    first = relay.forwarder
    os.kill(first.pid, signal.SIGKILL)  # mid-send: HighLevel has not answered yet
    assert first.wait(10) == -signal.SIGKILL
    assert time.monotonic() - max(r.at for r in fake.requests) < fake.latency, \
        "killed too late: HighLevel had already answered"
    assert attempts(first) == []  # it never learned the outcome
    assert {relay.event(i)["status"] for i in ids} == {"queued"}

    # A new forwarder re-sends once the dead one's leases end. SIGTERM it while those
    # sends are in flight: it finishes them, records them, and exits 0.
    fake.latency = 2.0
    second = relay.start_forwarder()
    wait_for(lambda: in_flight(2 * len(docs)), timeout=20, what="the re-sends")
    second.signal(signal.SIGTERM)
    assert time.monotonic() - max(r.at for r in fake.requests) < fake.latency, \
        "SIGTERM too late: HighLevel had already answered"
    stop_cleanly(second)
    relay.wait_delivered(*ids, timeout=5)
    for doc in docs:
        sent = patches_for(fake, doc)
        assert len(sent) == 2, (doc, [r.at for r in sent])  # at least once: sent again
        assert sent[1].at - sent[0].at >= lease - 0.5, f"{doc} re-sent before its lease ended"
        assert all(r.token == HL_TOKEN for r in sent)
    logged = attempts(second)
    assert sorted(r["document_id"] for r in logged) == sorted(docs)
    assert {r["outcome"] for r in logged} == {"delivered"}

    stop_cleanly(relay.web)
    assert len(fake.requests) == 2 * len(docs)
    assert_no_secret_logged(relay.web, first, second)
