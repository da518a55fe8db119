"""Reliability: no accepted view is lost when a process is killed, the store restarts or
HighLevel is down for a while.

Real parts, as in test_e2e.py: gunicorn (2 workers) and ``flask forwarder`` processes
started the way the Procfile does, a real store (SQLite file or PostgreSQL; the store
restart uses a private PostgreSQL cluster, never the shared server), the fake HighLevel
over HTTP on loopback. Each test ends with the same invariant, ``count_views``
(processes.py): the views accepted equal those delivered plus those still pending (none
by the end), none lost and none half-written, checked against the store and against the
PATCHes the fake HighLevel received.

Short settings keep the file fast: ``LEASE_SECONDS`` of 3 where a lease must end, a
3-second coalescing window (``WINDOW``), outages of a few seconds.
"""

from __future__ import annotations

import json
import math
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
import sqlalchemy as sa

from service.store.db import delivery_log, events

from .processes import (
    ADMIN_KEY,
    HL_TOKEN,
    INGEST_KEY,
    LOCATION,
    WINDOW,
    ViewCount,
    assert_no_secret_logged,
    attempts,
    count_views,
    free_port,
    json_lines,
    patches_for,
    stop_cleanly,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
BROWSER = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
           "Chrome/131.0.0.0 Safari/537.36")  # a person's pixel GET, not a machine open
GIF_SIZE = 43


def read_db(db_url: str, statement):
    """Rows of one SELECT, in the test process (the store is the source of truth)."""
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(statement).all()
    finally:
        engine.dispose()


def wait_all_delivered(db_url: str, fake, accepted: list[str], *, timeout: float) -> ViewCount:
    """Poll ``count_views`` (its invariants hold at every poll) until nothing is pending."""
    count = wait_for(lambda: (c := count_views(db_url, fake, accepted=accepted)).pending == 0
                     and c, timeout=timeout, interval=0.3, what="every stored view delivered")
    assert count.failed == 0 and count.delivered == count.stored >= len(set(accepted)), count
    return count


# -- 1. kill -9 of a forwarder mid-send ----------------------------------------------------


def test_killed_forwarder_loses_nothing(start_relay, fake, db_url):
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
    # Accepted = delivered + pending, though HighLevel has (unknown to us) applied them all.
    assert count_views(db_url, fake, accepted=ids) == ViewCount(3, 0, 3, 0)

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
    assert count_views(db_url, fake, accepted=ids) == ViewCount(3, 3, 0, 0)
    assert_no_secret_logged(relay.web, first, second)


# -- 2. kill -9 of a gunicorn worker during a burst ----------------------------------------


@dataclass
class Answer:
    """One POST of a burst: the eventIds it carried and what came back, if anything."""

    keys: list[str]
    status: int | None  # None: no HTTP answer (the connection failed)
    sent: dict = field(default_factory=dict)  # the request's body
    body: object = None
    error: str | None = None
    at: float = field(default_factory=time.monotonic)  # when it ended


def test_killed_web_worker_loses_no_accepted_view(start_relay, fake, db_url):
    relay = start_relay(LEASE_SECONDS="3")
    relay.store_token(LOCATION)
    master = relay.web
    workers = master.children()
    assert len(workers) == 2, workers
    answers: list[Answer] = []
    stop = threading.Event()

    def client(n: int) -> None:
        """POST batches of 3 events (5 documents in turn), each on a new connection."""
        for i in range(400):  # bounded; the test stops it much sooner
            if stop.is_set():
                return
            keys = [f"burst-{n}-{i}-{k}" for k in range(3)]
            body = {"events": [{"locationId": LOCATION, "invoiceId": f"inv_w{(n + i + k) % 5}",
                                "eventId": key} for k, key in enumerate(keys)]}
            try:
                resp = requests.post(relay.url + "/v1/events", json=body, timeout=10, headers={
                    "Authorization": f"Bearer {INGEST_KEY}", "Connection": "close"})
            except requests.RequestException as exc:
                answers.append(Answer(keys, None, body, error=type(exc).__name__))
                continue
            answers.append(Answer(keys, resp.status_code, body,
                                  resp.json() if resp.status_code == 202 else resp.text))

    threads = [threading.Thread(target=client, args=(n,), name=f"burst-{n}") for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: sum(a.status == 202 for a in answers) >= 20, timeout=20,
                 what="the burst to get going")
        victim = workers[0]
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        respawned = wait_for(lambda: (now := master.children()) and len(now) == 2
                             and victim not in now and now, timeout=20,
                             what="gunicorn to replace the killed worker")
        [new_worker] = set(respawned) - set(workers)

        def served_by_new_worker() -> bool:
            return any(r.get("pid") == new_worker and r.get("path") == "/v1/events"
                       and r.get("status") == 202 for r in json_lines(master.stdout()))

        wait_for(served_by_new_worker, timeout=20, what="the new worker to accept events")
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert not any(t.is_alive() for t in threads)
    assert master.running() and sorted(master.children()) == sorted(respawned)

    answered = [a for a in answers if a.status is not None]
    lost = [a for a in answers if a.status is None]
    assert {a.status for a in answered} == {202}, Counter(a.status for a in answered)
    assert any(a.at > killed_at for a in answered), "no event accepted after the kill"
    accepted = [e["id"] for a in answered for e in a.body["events"]]
    assert len(accepted) == 3 * len(answered)

    # A POST whose connection died may or may not be stored, but all or none of its batch.
    keys = {k for a in lost for k in a.keys}
    stored = {row.event_key for row in read_db(db_url, sa.select(events.c.event_key).where(
        events.c.event_key.in_(keys)))} if keys else set()
    for a in lost:
        assert len(stored & set(a.keys)) in (0, 3), (a.error, stored & set(a.keys))
    # The client retries them as they were: stored ones answer "duplicate".
    for a in lost:
        statuses = {e["status"] for e in relay.post_events(a.sent)["events"]}
        assert statuses == ({"duplicate"} if a.keys[0] in stored else {"queued"}), statuses

    count = wait_all_delivered(db_url, fake, accepted, timeout=2 * WINDOW + 20)
    assert count.stored == len(accepted) + 3 * len(lost)
    relay.wait_delivered(*accepted, timeout=10)  # and the API says so, for every 202
    stop_cleanly(master, relay.forwarder)
    assert_no_secret_logged(master, relay.forwarder)


# -- 3. the PostgreSQL server stopped and started under traffic ----------------------------


@dataclass
class Cluster:
    """A private PostgreSQL cluster in a temporary directory, run as user ``postgres``."""

    root: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def run(self, *args: str) -> str:
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        done = subprocess.run([*as_postgres, *args], capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}" \
                                     f"{done.stderr}"
        return done.stdout

    def ctl(self, *args: str) -> str:
        return self.run(str(PG_BIN / "pg_ctl"), "-D", str(self.root / "data"), *args)

    def start(self) -> None:
        self.ctl("start", "-w", "-t", "30", "-l", str(self.log), "-o",
                 f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1")

    def stop(self, mode: str) -> None:
        self.ctl("stop", "-w", "-t", "30", "-m", mode)

    def running(self) -> bool:
        return (self.root / "data" / "postmaster.pid").exists()


@pytest.fixture
def private_pg() -> Iterator[Cluster]:
    """initdb a cluster into a temporary directory and start it on a free port; stopped
    and removed afterwards. Skipped where the PostgreSQL server binaries are absent."""
    if not (PG_BIN / "initdb").exists() or not (PG_BIN / "pg_ctl").exists():
        pytest.skip(f"PostgreSQL server binaries (initdb, pg_ctl) not found in {PG_BIN}; "
                    "install postgresql-15 or set PG_BIN")
    root = Path(tempfile.mkdtemp(prefix="relay-pg-"))  # short: the socket path must fit
    if os.geteuid() == 0:  # initdb refuses root: the cluster belongs to postgres
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            pytest.skip("running as root, and there is no user 'postgres' to run initdb as")
        os.chown(root, user.pw_uid, user.pw_gid)
    cluster = Cluster(root, free_port())
    try:
        cluster.run(str(PG_BIN / "initdb"), "-D", str(root / "data"), "-U", "postgres",
                    "-A", "trust", "--no-sync")
        cluster.start()
        yield cluster
    finally:
        try:
            if cluster.running():
                try:
                    cluster.stop("immediate")
                except AssertionError as exc:  # pg_ctl failed: kill the postmaster we started
                    print(f"pg_ctl stop failed, killing the postmaster: {exc}")
                    pid = int((root / "data" / "postmaster.pid").read_text().split()[0])
                    os.kill(pid, signal.SIGKILL)
            log = cluster.log.read_text(errors="replace") if cluster.log.exists() else ""
        finally:  # removed even if stopping failed
            shutil.rmtree(root)
        print(f"===== private PostgreSQL log\n{log}")


@dataclass
class Call:
    kind: str  # "post" | "pixel"
    started: float
    ended: float
    status: int | None
    headers: dict = field(default_factory=dict)
    body: bytes = b""
    error: str | None = None


class Traffic:
    """A client thread POSTing events and GETting a pixel, in turn, about 20 times a second."""

    def __init__(self, url: str, pixel_path: str):
        self.url, self.pixel_path = url, pixel_path
        self.calls: list[Call] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic")

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "traffic thread did not stop"

    def _run(self) -> None:
        with requests.Session() as session:
            for i in range(3000):  # bounded: 150 s at this pace
                if self._stop.wait(0.05):
                    return
                if i % 2:
                    self._call(session, "pixel", "GET", self.pixel_path,
                               headers={"User-Agent": BROWSER})
                else:
                    self._call(session, "post", "POST", "/v1/events",
                               json={"locationId": LOCATION, "invoiceId": f"inv_pg{i % 3}"},
                               headers={"Authorization": f"Bearer {INGEST_KEY}"})

    def _call(self, session, kind: str, method: str, path: str, **kwargs) -> None:
        started = time.monotonic()
        try:
            resp = session.request(method, self.url + path, timeout=10, **kwargs)
        except requests.RequestException as exc:
            self.calls.append(Call(kind, started, time.monotonic(), None,
                                   error=type(exc).__name__))
            return
        self.calls.append(Call(kind, started, time.monotonic(), resp.status_code,
                               dict(resp.headers), resp.content))

    def since(self, t: float, kind: str, status: int) -> list[Call]:
        return [c for c in list(self.calls)
                if c.kind == kind and c.started >= t and c.status == status]


# The store's URL comes from the private cluster: ``db_url`` is not used for this test.
@pytest.mark.parametrize("db_url", [pytest.param("unused", id="private-postgresql")])
def test_store_restart_recovers_without_process_restart(private_pg, start_relay, fake):
    relay = start_relay(DATABASE_URL=private_pg.url, LEASE_SECONDS="3")
    relay.store_token(LOCATION)
    status, minted = relay.request("POST", "/v1/pixel-urls", key=ADMIN_KEY,
                                   body={"locationId": LOCATION, "invoiceId": "inv_pixel"})
    assert status == 200, minted
    pixel_path = urlsplit(minted["url"]).path
    workers, forwarder = relay.web.children(), relay.forwarder
    assert len(workers) == 2, workers
    event = {"locationId": LOCATION, "invoiceId": "inv_pg0"}
    before = relay.post_events(event)["id"]

    def fresh(method: str, path: str, **kwargs) -> requests.Response:
        """One request on a new connection (so either worker may answer it)."""
        headers = {"Authorization": f"Bearer {INGEST_KEY}", "Connection": "close",
                   **kwargs.pop("headers", {})}
        return requests.request(method, relay.url + path, timeout=10, headers=headers,
                                **kwargs)

    # A restart between requests: every pooled connection is now stale, yet the first
    # requests after it succeed, reads (which have no second try) as well as writes.
    private_pg.stop("fast")
    private_pg.start()
    quiet = []
    for _ in range(6):
        with fresh("GET", f"/v1/events/{before}") as resp:
            assert resp.status_code == 200, resp.text
    for _ in range(6):
        with fresh("POST", "/v1/events", json=event) as resp:
            assert resp.status_code == 202, resp.text
            quiet.append(resp.json()["id"])
    up: list[tuple[float, float]] = []  # intervals when the store was surely up

    with Traffic(relay.url, pixel_path) as traffic:
        up_since = time.monotonic()
        for mode in ("fast", "immediate"):
            wait_for(lambda t=up_since: len(traffic.since(t, "post", 202)) >= 5 and
                     len(traffic.since(t, "pixel", 200)) >= 5, timeout=20,
                     what="traffic to flow")
            up.append((up_since, time.monotonic()))
            private_pg.stop(mode)
            down_at = time.monotonic()

            # While the store is down: ingest and reads say 503 + Retry-After, the pixel
            # still answers its GIF, readiness fails, liveness holds.
            for method, path, body in (("POST", "/v1/events", event),
                                       ("GET", f"/v1/events/{before}", None)):
                with fresh(method, path, json=body) as resp:
                    assert resp.status_code == 503, (mode, path, resp.status_code, resp.text)
                    assert resp.headers.get("Retry-After", "").isdigit(), resp.headers
                    assert resp.json()["statusCode"] == 503, resp.text
            with fresh("GET", pixel_path, headers={"User-Agent": BROWSER}) as resp:
                assert (resp.status_code, resp.headers["Content-Type"], len(resp.content)) \
                    == (200, "image/gif", GIF_SIZE), mode
            for path, expected in (("/readyz", 503), ("/healthz", 200)):
                with fresh("GET", path) as resp:
                    assert resp.status_code == expected, (mode, path, resp.text)
            wait_for(lambda t=down_at: len(traffic.since(t, "post", 503)) >= 3 and
                     len(traffic.since(t, "pixel", 200)) >= 3, timeout=20,
                     what="traffic to meet the outage")

            private_pg.start()
            relay.wait_ready()  # the same processes: nothing restarted them
            up_since = time.monotonic()
        wait_for(lambda: len(traffic.since(up_since, "post", 202)) >= 5, timeout=20,
                 what="POSTs accepted after the restart")
        up.append((up_since, time.monotonic()))

    assert relay.web.running() and sorted(relay.web.children()) == sorted(workers), \
        "a web process restarted"
    assert forwarder.running() and relay.forwarders == [forwarder], "the forwarder restarted"
    calls = traffic.calls
    for call in calls:  # 202 or 503 with Retry-After; the pixel always its GIF
        if call.kind == "pixel":
            assert (call.status, len(call.body)) == (200, GIF_SIZE), call
        else:
            assert call.status in (202, 503), call
            assert call.status == 202 or "Retry-After" in call.headers, call

    def surely_up(call: Call) -> bool:
        return any(start <= call.started and call.ended <= end for start, end in up)

    # While the store was up, every request succeeded, and every pixel GET stored a view.
    assert [c for c in calls if c.kind == "post" and surely_up(c) and c.status != 202] == []
    pixels_up = sum(1 for c in calls if c.kind == "pixel" and surely_up(c))
    pixels_all = sum(1 for c in calls if c.kind == "pixel")
    # (The pixel's repeats from this one client fold into a row per window: count views.)
    stored_pixels = sum(row.views for row in read_db(private_pg.url, sa.select(
        events.c.views).where(events.c.source == "pixel")))
    assert pixels_up <= stored_pixels <= pixels_all, (pixels_up, stored_pixels, pixels_all)
    assert sum(c.status == 503 for c in calls) >= 6  # the outages were met by traffic

    accepted = [*quiet, before, *(json.loads(c.body)["id"] for c in calls
                          if c.kind == "post" and c.status == 202)]
    count = wait_all_delivered(private_pg.url, fake, accepted, timeout=2 * WINDOW + 20)
    assert count.stored >= len(accepted) + stored_pixels, count
    relay.wait_delivered(*accepted, timeout=10)
    errors = [r for r in json_lines(forwarder.stdout()) if r.get("event") == "forwarder.error"]
    assert errors, "the forwarder never met the outage"
    stop_cleanly(relay.web, forwarder)
    assert_no_secret_logged(relay.web, forwarder)


# -- 4. HighLevel unreachable, then failing, then back -------------------------------------


def test_highlevel_outage_loses_nothing_and_backs_off(start_relay, fake, db_url):
    relay = start_relay(HIGHLEVEL_TIMEOUT_SECONDS="2")
    relay.store_token(LOCATION)
    port = urlsplit(fake.url).port
    docs = [("invoiceId", "inv_o1"), ("invoiceId", "inv_o2"), ("estimateId", "est_o3")]

    def post_each() -> list[str]:
        return [e["id"] for e in relay.post_events({"events": [
            {"locationId": LOCATION, field: doc} for field, doc in docs]})["events"]]

    def log_rows() -> list:
        log = delivery_log.c
        return read_db(db_url, sa.select(log.document_id, log.attempt, log.outcome,
                                         log.http_status, log.views_covered).order_by(log.id))

    # Unreachable: nothing listens on HighLevel's port (the forwarder has no connection
    # open to it yet: nothing was sent before).
    fake.stop()
    outage_began = time.monotonic()
    ids = post_each()
    wait_for(lambda: {r.document_id for r in log_rows() if r.outcome == "network_error"}
             == {doc for _, doc in docs}, timeout=15, what="a refused send of each document")
    # Back on the same port but failing: 503 without Retry-After, views still arriving.
    fake.set_down(True)
    fake.start(port=port)
    ids += post_each()
    wait_for(lambda: {r.document_id for r in list(fake.requests) if r.status == 503}
             == {doc for _, doc in docs}, timeout=40,
             what="a retry of each document to reach the failing HighLevel")
    fake.set_down(False)
    outage = time.monotonic() - outage_began

    relay.wait_delivered(*ids, timeout=70)  # the last backoff may be up to ~30 s long
    count = count_views(db_url, fake, accepted=ids)
    assert count == ViewCount(len(ids), len(ids), 0, 0), count
    rows = log_rows()
    failed = [r for r in fake.requests if r.status == 503]
    for _, doc in docs:
        mine = [r for r in rows if r.document_id == doc]
        # Each document: some failed attempts, each one spending a retry (so the backoff
        # grows), then ONE delivery covering all its views.
        assert [r.attempt for r in mine] == list(range(1, len(mine) + 1)), mine
        assert [r.outcome for r in mine[:-1]] and mine[-1].outcome == "delivered", mine
        assert {r.outcome for r in mine[:-1]} <= {"network_error", "retry"}, mine
        assert mine[-1].views_covered == 2
        assert len(patches_for(fake, doc)) == sum(r.http_status is not None for r in mine)
        assert sum(r.document_id == doc for r in failed) == \
            sum(r.http_status == 503 for r in mine)
        # No hot loop: full-jitter backoff (base 2 s) allows about log2(outage) + 2
        # attempts in the outage; polling every 0.05-0.25 s would make dozens.
        bound = 4 + math.ceil(math.log2(1 + outage))
        assert len(mine) - 1 <= bound, (doc, len(mine) - 1, f"{outage:.1f} s", bound)
    assert_no_secret_logged(relay.web, relay.forwarder)
