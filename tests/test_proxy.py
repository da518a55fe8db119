"""The buffering proxy in front of the web tier: deploy/haproxy.cfg.j2, for real.

Debian's HAProxy, configured from the shipped template by ``render_config`` of
scripts/run_lb.py, in front of two gunicorn instances (1 worker x 16 threads each, on
127.0.0.1, ``TRUSTED_PROXIES=1``) sharing one SQLite store: `make run-lb`'s topology,
started with the harness of processes.py. One stack serves the module, since starting it
is most of the cost; each test first restarts any instance an earlier one stopped.

- Slow clients (headers, or a body, a byte at a time) are held by the proxy: /healthz
  through it keeps answering, none of them reaches gunicorn, and the proxy cuts them off
  with a 408 after ``timeout http-request``.
- The address the proxy saw is the client's address in the app's verdicts and access log;
  an ``X-Forwarded-For`` forged by the client is not (a capture server shows the proxy
  replaces it, and that a body reaches a server only once it has arrived whole).
- A rolling restart (SIGTERM an instance, restart it, healthy, then the next) under a
  steady stream of POSTs fails no request.
- ``kill -9`` of an instance's master and workers under that stream: the proxy routes
  around it, and every event answered 202 is stored.
- `make run-lb`'s script serves through the proxy and stops on Ctrl-C; without HAProxy it
  says which package to install.

SQLite only: what the proxy does does not depend on the store (PostgreSQL's paths are in
test_e2e.py and test_reliability.py). Skipped where HAProxy is not installed, except in CI
(``CI`` set), where that is a failure: .ci/run installs it.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
import sqlalchemy as sa

from service.store.db import events

from .processes import (
    ADMIN_KEY,
    INGEST_KEY,
    LOCATION,
    ROOT,
    STOP_WITHIN,
    Process,
    Processes,
    Relay,
    base_env,
    free_port,
    gunicorn,
    haproxy,
    json_lines,
    load_script,
    wait_for,
)

pytestmark = pytest.mark.e2e

run_lb = load_script("run_lb")
HAPROXY = run_lb.find_haproxy(os.environ)
NO_HIGHLEVEL = "http://127.0.0.1:9"  # no forwarder runs here: nothing calls it
BROWSER = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
           "Chrome/131.0.0.0 Safari/537.36")  # a person's pixel GET, not a machine open
SCANNER_IP = "40.107.1.2"  # Exchange Online Protection: a `scanner` network (machine_opens.toml)
CLIENT_IP = "127.0.0.2"  # a client on loopback that is not the proxy's own 127.0.0.1
HTTP_REQUEST_TIMEOUT = 10.0  # the template's `timeout http-request`
GIF_SIZE = 43


def require_haproxy() -> str:
    """HAProxy's binary; skip without it, but fail in CI, which must run these tests."""
    if HAPROXY is None:
        reason = "HAProxy is not installed: apt-get install haproxy (.ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; in CI the proxy tests must run, not be skipped")
        pytest.skip(reason)
    return HAPROXY


# -- the stack: HAProxy in front of two gunicorn instances ---------------------------------


@dataclass
class Instance:
    """One gunicorn instance behind the proxy (a machine, in production)."""

    name: str
    port: int
    proc: Process

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def served(self) -> list[dict]:
        """Its access log: one ``http.request`` record per answered request."""
        return [r for r in json_lines(self.proc.stdout()) if r.get("event") == "http.request"]


class Stack:
    """HAProxy from the shipped template on ``url``, in front of ``instances``."""

    def __init__(self, procs: Processes, db_url: str, binary: str, config: Path):
        self.procs, self.db_url = procs, db_url
        ports: set[int] = set()
        for _ in range(20):  # three distinct ports
            ports.add(free_port())
            if len(ports) == 3:
                break
        self.port, *web_ports = sorted(ports)
        self.url = f"http://127.0.0.1:{self.port}"
        self.instances = {name: Instance(name, port, self._start_web(name, port))
                          for name, port in zip(("web1", "web2"), web_ports, strict=True)}
        for instance in self.instances.values():  # both boot at once, then are awaited
            self._wait_ready(instance)
        config.write_text(run_lb.render_config(
            bind=f"127.0.0.1:{self.port}",
            servers=[(i.name, f"127.0.0.1:{i.port}") for i in self.instances.values()]))
        self.proxy = procs.start("haproxy", haproxy(binary, config))
        for instance in self.instances.values():
            self.wait_routed(instance)

    def _start_web(self, name: str, port: int) -> Process:
        return self.procs.start(name, gunicorn(), PORT=str(port))

    def _wait_ready(self, instance: Instance) -> None:
        with requests.Session() as session:
            Relay(self.procs, instance.url, session, web=instance.proc).wait_ready()

    def restart(self, instance: Instance) -> None:
        """Start ``instance`` again on its port (as systemd's Restart= would); wait ready."""
        instance.proc = self._start_web(instance.name, instance.port)
        self._wait_ready(instance)

    def wait_routed(self, instance: Instance, timeout: float = 20.0) -> None:
        """Until a /healthz sent through the proxy is answered by ``instance``: the proxy
        counts it as up."""
        def answered() -> int:
            return sum(r["path"] == "/healthz" for r in instance.served())

        before = answered()

        def routed() -> bool:
            assert self.proxy.running(), f"haproxy exited\n{self.proxy.report()}"
            try:
                requests.get(self.url + "/healthz", timeout=5,
                             headers={"Connection": "close"}).close()
            except requests.RequestException:
                return False
            return answered() > before

        wait_for(routed, timeout=timeout, interval=0.1,
                 what=f"the proxy to route requests to {instance.name}")

    def ensure_up(self) -> None:
        """Restart any instance an earlier test stopped or killed; wait until routed."""
        for instance in self.instances.values():
            if not instance.proc.running():
                instance.proc.kill_group()  # workers a killed master left, if any
                self.restart(instance)
        for instance in self.instances.values():
            self.wait_routed(instance)

    def proxy_log(self) -> str:
        return self.proxy.stdout()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, sqlite_template) -> Iterator[Stack]:
    binary = require_haproxy()
    root = tmp_path_factory.mktemp("proxy")
    shutil.copy(sqlite_template, root / "relay.db")  # migrated, as `make run-lb` would
    db_url = f"sqlite:///{root}/relay.db"
    (root / "logs").mkdir()
    run_dir = root / "run"  # gunicorn's control socket and metrics directory
    run_dir.mkdir(mode=0o700)
    procs = Processes(root / "logs", {**base_env(db_url, NO_HIGHLEVEL, 0),
                                      "TRUSTED_PROXIES": "1",  # the proxy is one hop
                                      "WEB_CONCURRENCY": "1",  # x 16 threads: boots faster
                                      "XDG_RUNTIME_DIR": str(run_dir), "TMPDIR": str(run_dir)})
    try:
        yield Stack(procs, db_url, binary, root / "haproxy.cfg")
    finally:
        procs.cleanup()


@pytest.fixture
def lb(stack: Stack) -> Stack:
    stack.ensure_up()
    return stack


def stored_event_ids(db_url: str, ids: list[str]) -> set[str]:
    """Which of ``ids`` are rows of the events table."""
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return {row.id for chunk in range(0, len(ids), 500) for row in conn.execute(
                sa.select(events.c.id).where(events.c.id.in_(ids[chunk:chunk + 500])))}
    finally:
        engine.dispose()


# -- slow clients --------------------------------------------------------------------------


@dataclass
class SlowClient:
    sock: socket.socket
    kind: str  # "headers" | "body"
    opened: float
    closed: float | None = None  # when the proxy closed it
    received: bytes = b""


class SlowClients:
    """Connections to the proxy that never finish their request: ``headers`` of them stop
    inside a header line, ``bodies`` of them inside a POST body; each sends one more byte
    every ``interval`` s until the proxy closes it, for at most ``limit`` s."""

    def __init__(self, port: int, *, headers: int, bodies: int, interval: float = 0.5,
                 limit: float = HTTP_REQUEST_TIMEOUT + 10):
        self.port, self.interval, self.limit = port, interval, limit
        self.kinds = ["headers"] * headers + ["body"] * bodies
        self.clients: list[SlowClient] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slow-clients")

    def __enter__(self) -> SlowClients:
        body_head = (f"POST /v1/events HTTP/1.1\r\nHost: relay\r\n"
                     f"Authorization: Bearer {INGEST_KEY}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: 4000\r\n\r\n"
                     f'{{"locationId": "{LOCATION}", "invoiceId": "inv_slow", "source": "')
        try:
            for kind in self.kinds:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                self.clients.append(SlowClient(sock, kind, time.monotonic()))
                first = ("GET /slow-headers HTTP/1.1\r\nHost: relay\r\nX-Slow: "
                         if kind == "headers" else body_head)
                sock.sendall(first.encode())
                sock.setblocking(False)
        except BaseException:
            self._close()
            raise
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)
        self._close()
        assert not self._thread.is_alive(), "slow-client thread did not stop"

    def _close(self) -> None:
        for client in self.clients:
            client.sock.close()

    def open(self) -> list[SlowClient]:
        return [c for c in self.clients if c.closed is None]

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit
        while self.open() and time.monotonic() < deadline:
            for client in self.open():
                try:
                    data = client.sock.recv(4096)
                except BlockingIOError:  # nothing from the proxy: still waiting for us
                    data = None
                except ConnectionError:
                    data = b""
                if data:  # the proxy's answer (a 408); it closes the connection next
                    client.received += data
                    continue
                if data == b"":
                    client.closed = time.monotonic()
                    continue
                try:
                    client.sock.send(b"a")
                except (BlockingIOError, ConnectionError):
                    client.closed = client.closed or time.monotonic()
            if self._stop.wait(self.interval):
                return


@dataclass
class Probe:
    elapsed: float
    status: int | None
    error: str | None = None

    @property
    def fast(self) -> bool:
        """Answered 200 within 1 s."""
        return self.status == 200 and self.elapsed <= 1.0


def probe(url: str) -> Probe:
    """GET /healthz on a new connection; how long the answer took."""
    started = time.monotonic()
    try:
        with requests.get(url + "/healthz", timeout=3, headers={"Connection": "close"}) as r:
            return Probe(time.monotonic() - started, r.status_code)
    except requests.RequestException as exc:
        return Probe(time.monotonic() - started, None, type(exc).__name__)


def test_slow_clients_are_held_by_the_proxy_and_healthz_keeps_answering(lb):
    """64 clients trickling header bytes, and 64 more trickling a POST body (what would
    tie up a gthread for as long as it lasts without `option http-buffer-request`)."""
    events_before = {i.name: sum(r["path"] == "/v1/events" for r in i.served())
                     for i in lb.instances.values()}
    with SlowClients(lb.port, headers=64, bodies=64) as slow:
        assert len(slow.open()) == 128
        probes: list[Probe] = []
        for _ in range(40):  # about 5 s, while every slow client is still trickling
            probes.append(probe(lb.url))
            if sum(not p.fast for p in probes) > 1:
                break  # 39 of 40 can no longer be reached
            time.sleep(0.1)  # pacing between probes, not a wait for readiness
        assert len(slow.open()) == 128, "slow clients closed before the probes ended"
        fast = [p for p in probes if p.fast]
        summary = (f"{len(fast)} of {len(probes)} probes answered within 1 s; median "
                   f"{statistics.median(p.elapsed for p in probes) * 1e3:.0f} ms, max "
                   f"{max(p.elapsed for p in probes) * 1e3:.0f} ms; failures "
                   f"{Counter(p.error or p.status for p in probes if p.status != 200)}")
        print(summary)
        assert len(fast) >= 39, summary
        # The proxy gives each request `timeout http-request` to arrive whole, then 408.
        wait_for(lambda: not slow.open(), timeout=HTTP_REQUEST_TIMEOUT + 8, interval=0.2,
                 what="the proxy to close every slow client")

    for client in slow.clients:
        held = client.closed - client.opened
        assert HTTP_REQUEST_TIMEOUT - 1 <= held <= HTTP_REQUEST_TIMEOUT + 4, (client.kind, held)
        assert client.received.startswith(b"HTTP/1.1 408"), (client.kind, client.received)
    # None of them reached gunicorn: the proxy held every byte.
    for instance in lb.instances.values():
        served = instance.served()
        assert not [r for r in served if r["path"] == "/slow-headers"], instance.name
        assert sum(r["path"] == "/v1/events" for r in served) == events_before[instance.name]
    assert lb.proxy_log().count(" 408 ") >= 128, "the proxy logged no 408s"


# -- the client's address ------------------------------------------------------------------


def get_from(source: str, port: int, path: str, headers: dict) -> tuple[int, bytes]:
    """GET ``path`` from the loopback address ``source`` (not the default 127.0.0.1)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_the_app_sees_the_address_the_proxy_saw_not_a_forged_one(lb):
    paths = {}
    for document in ("inv_via_proxy", "inv_direct"):
        resp = requests.post(lb.url + "/v1/pixel-urls", timeout=10,
                             headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                             json={"locationId": LOCATION, "invoiceId": document})
        assert resp.status_code == 200, resp.text
        paths[document] = urlsplit(resp.json()["url"]).path
    forged = {"User-Agent": BROWSER, "X-Forwarded-For": SCANNER_IP}

    # Through the proxy, from 127.0.0.2, claiming to be a mail scanner.
    status, body = get_from(CLIENT_IP, lb.port, paths["inv_via_proxy"],
                            {**forged, "X-Request-ID": "via-proxy"})
    assert (status, len(body)) == (200, GIF_SIZE)
    # The control: the same claim made straight to an instance (what binding gunicorn to
    # 127.0.0.1 and putting the proxy in front prevents) is believed, so the check above
    # would catch a proxy that passed the header on.
    direct = lb.instances["web1"]
    status, body = get_from("127.0.0.1", direct.port, paths["inv_direct"],
                            {**forged, "X-Request-ID": "direct"})
    assert (status, len(body)) == (200, GIF_SIZE)

    engine = sa.create_engine(lb.db_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            verdicts = {r.document_id: (r.verdict, r.verdict_reason) for r in conn.execute(
                sa.select(events.c.document_id, events.c.verdict, events.c.verdict_reason)
                .where(events.c.document_id.in_(list(paths))))}
    finally:
        engine.dispose()
    assert verdicts["inv_via_proxy"] == ("human", "no-match"), verdicts
    assert verdicts["inv_direct"][0] == "scanner", verdicts
    assert verdicts["inv_direct"][1].startswith("ip:microsoft-eop"), verdicts

    def logged() -> dict[str, str]:
        # By request id: the access log shows a pixel path with its token cut short.
        return {r["request_id"]: r["remote_addr"] for i in lb.instances.values()
                for r in i.served() if r.get("request_id") in ("via-proxy", "direct")
                and r["path"].startswith("/v1/pixel/")}

    seen = wait_for(lambda: len(logged()) == 2 and logged(), timeout=5,
                    what="both pixel GETs in the access logs")
    assert seen == {"via-proxy": CLIENT_IP, "direct": SCANNER_IP}
    # The proxy's own log names the client as it connected.
    assert re.search(rf"^{re.escape(CLIENT_IP)}:\d+ .*GET /v1/pixel/", lb.proxy_log(), re.M)


class Capture(ThreadingHTTPServer):
    """A stand-in server behind the proxy that records what reaches it and answers 200."""

    daemon_threads = True

    def __init__(self):
        self.requests: list[dict] = []
        super().__init__(("127.0.0.1", 0), CaptureHandler)


class CaptureHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        self.accepted = time.monotonic()  # when the proxy's connection was accepted
        super().setup()

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.server.requests.append({"method": self.command, "path": self.path,
                                     "headers": self.headers, "accepted": self.accepted,
                                     "body": self.rfile.read(length)})
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _answer

    def log_message(self, *args):  # quiet
        pass


def test_the_proxy_replaces_forwarded_headers_and_buffers_whole_requests(tmp_path):
    binary = require_haproxy()
    port = free_port()
    capture = Capture()
    server = threading.Thread(target=capture.serve_forever, name="capture")
    server.start()
    config = tmp_path / "haproxy.cfg"
    config.write_text(run_lb.render_config(
        bind=f"127.0.0.1:{port}", servers=[("capture", f"127.0.0.1:{capture.server_port}")]))
    procs = Processes(tmp_path, dict(os.environ))
    try:
        proxy = procs.start("haproxy", haproxy(binary, config))

        def checked() -> bool:  # listening, and its health check (GET /readyz) came
            assert proxy.running(), proxy.report()
            try:
                requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).close()
            except requests.ConnectionError:
                return False
            return ("GET", "/readyz") in {(r["method"], r["path"]) for r in capture.requests}

        wait_for(checked, timeout=10, what="haproxy to listen and check its server")
        body = b'{"locationId": "loc", "invoiceId": "inv"}' * 40
        head = (f"POST /v1/events HTTP/1.1\r\nHost: relay\r\n"
                f"X-Forwarded-For: {SCANNER_IP}\r\nX-Forwarded-For: 10.1.2.3, 10.4.5.6\r\n"
                f"Forwarded: for={SCANNER_IP};proto=https\r\nX-Forwarded-Host: evil.example\r\n"
                f"X-Forwarded-Proto: https\r\nX-Forwarded-Port: 443\r\n"
                f"X-Forwarded-Prefix: /evil\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", port), timeout=10,
                                      source_address=(CLIENT_IP, 0)) as sock:
            sock.sendall(head + body[:100])
            time.sleep(0.5)  # a slow client: the rest of the body comes half a second later
            rest_sent = time.monotonic()
            sock.sendall(body[100:])
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer
    finally:
        procs.cleanup()
        capture.shutdown()
        server.join(10)
        capture.server_close()

    [got] = [r for r in capture.requests if r["method"] == "POST"]
    headers = got["headers"]
    assert headers.get_all("X-Forwarded-For") == [CLIENT_IP]  # replaced, not appended
    assert headers.get_all("X-Forwarded-Proto") == ["http"]
    for name in ("Forwarded", "X-Forwarded-Host", "X-Forwarded-Port", "X-Forwarded-Prefix"):
        assert headers.get(name) is None, name
    # The server saw the request only once it had arrived whole.
    assert got["accepted"] >= rest_sent, round(rest_sent - got["accepted"], 3)
    assert got["body"] == body


# -- instances stopped and killed under load -----------------------------------------------


@dataclass
class Answer:
    key: str  # the eventId sent
    started: float
    status: int | None  # None: no HTTP answer
    event_id: str | None = None
    error: str | None = None
    ended: float = field(default_factory=time.monotonic)


class EventStream:
    """Client threads POSTing one event at a time through the proxy, each on its own
    keep-alive connection, each event with its own eventId; bounded in count and time."""

    def __init__(self, url: str, *, threads: int = 3, pace: float = 0.03, limit: float = 90.0,
                 per_thread: int = 3000):
        self.url, self.pace, self.limit, self.per_thread = url, pace, limit, per_thread
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), name=f"stream-{n}")
                         for n in range(threads)]

    def __enter__(self) -> EventStream:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        assert not any(t.is_alive() for t in self._threads), "stream threads did not stop"

    def _run(self, n: int) -> None:
        deadline = time.monotonic() + self.limit
        with requests.Session() as session:
            for i in range(self.per_thread):
                if self._stop.wait(self.pace) or time.monotonic() > deadline:
                    return
                key = f"lb-{n}-{i}-{time.monotonic_ns()}"
                started = time.monotonic()
                try:
                    resp = session.post(self.url + "/v1/events", timeout=10, json={
                        "locationId": LOCATION, "invoiceId": f"inv_lb{i % 5}", "eventId": key},
                        headers={"Authorization": f"Bearer {INGEST_KEY}"})
                except requests.RequestException as exc:
                    self.answers.append(Answer(key, started, None, error=type(exc).__name__))
                    continue
                ok = resp.status_code == 202
                self.answers.append(Answer(key, started, resp.status_code,
                                           resp.json()["id"] if ok else None,
                                           None if ok else resp.text[:200]))

    def accepted(self, since: float = 0.0) -> int:
        return sum(a.status == 202 and a.started >= since for a in list(self.answers))

    def failed(self) -> list[Answer]:
        return [a for a in self.answers if a.status != 202]


def events_answered(instance: Instance) -> int:
    return sum(r["path"] == "/v1/events" and r["status"] == 202 for r in instance.served())


def test_rolling_restart_under_load_fails_no_request(lb):
    windows = []  # (name, SIGTERM sent, restarted instance answering through the proxy)
    sigtermed: list[Process] = []
    with EventStream(lb.url) as stream:
        wait_for(lambda: stream.accepted() >= 20, timeout=20, what="the stream to flow")
        for instance in lb.instances.values():
            old = instance.proc
            old.signal(signal.SIGTERM)
            stopped = time.monotonic()
            try:
                code = old.wait(STOP_WITHIN)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{old.name} still running {STOP_WITHIN:g}s after "
                                     "SIGTERM") from None
            assert code == 0, f"{old.name} exited {code} after SIGTERM"
            sigtermed.append(old)
            wait_for(lambda p=old: not p.group_alive(), timeout=5,
                     what=f"{old.name}'s workers to exit")
            lb.restart(instance)
            wait_for(lambda i=instance: events_answered(i) > 0, timeout=20,
                     what=f"the proxy to send events to the restarted {instance.name}")
            windows.append((instance.name, stopped, time.monotonic()))
        last = time.monotonic()
        wait_for(lambda: stream.accepted(since=last) >= 20, timeout=20,
                 what="events accepted after the restarts")

    answers = stream.answers
    failed = stream.failed()
    print(f"rolling restart: {len(answers)} requests, {len(failed)} failed; windows "
          + ", ".join(f"{name} {end - start:.1f} s" for name, start, end in windows))
    assert failed == [], Counter(a.error or a.status for a in failed)
    for name, start, end in windows:  # the stream went on while each instance was away
        assert sum(start <= a.started and a.ended <= end for a in answers) >= 10, name
    ids = [a.event_id for a in answers]
    missing = set(ids) - stored_event_ids(lb.db_url, ids)
    assert not missing, f"{len(missing)} accepted event(s) not stored"
    # The SIGTERMed instances finished what they had and said so.
    for proc in sigtermed:
        assert "Shutting down: Master" in proc.stdout(), proc.name


def test_killed_instance_is_routed_around_and_every_accepted_event_is_stored(lb):
    victim, survivor = lb.instances["web1"], lb.instances["web2"]
    with EventStream(lb.url) as stream:
        wait_for(lambda: stream.accepted() >= 20, timeout=20, what="the stream to flow")
        served_before = events_answered(survivor)
        victim.proc.kill_group()  # SIGKILL to the master and its workers at once
        killed = time.monotonic()
        wait_for(lambda: not victim.proc.group_alive(), timeout=5,
                 what="the killed instance's workers to be gone")
        wait_for(lambda: stream.accepted(since=killed) >= 40
                 and time.monotonic() - killed >= 3, timeout=30,
                 what="events accepted after the kill")

    answers = stream.answers
    failed = stream.failed()
    print(f"kill -9: {len(answers)} requests, {len(failed)} failed "
          f"({Counter(a.error or a.status for a in failed)})")
    # Only a request in flight at the kill may fail (its answer half-sent); every one
    # started after it is answered by the survivor.
    after = [a for a in answers if a.started > killed]
    assert after and all(a.status == 202 for a in after), \
        Counter(a.error or a.status for a in after)
    assert all(a.started <= killed for a in failed), failed
    wait_for(lambda: events_answered(survivor) - served_before >= len(after), timeout=5,
             what="the survivor's access log to show every event accepted after the kill")
    ids = [a.event_id for a in answers if a.status == 202]
    missing = set(ids) - stored_event_ids(lb.db_url, ids)
    assert not missing, f"{len(missing)} accepted event(s) not stored: {sorted(missing)[:5]}"
    assert "Server web/web1 is DOWN" in lb.proxy_log()


# -- make run-lb ---------------------------------------------------------------------------


def test_run_lb_without_haproxy_says_which_package_to_install(tmp_path):
    env = {**base_env(f"sqlite:///{tmp_path}/relay.db", NO_HIGHLEVEL, free_port()),
           "HAPROXY": str(tmp_path / "no-haproxy")}
    done = subprocess.run([sys.executable, "scripts/run_lb.py"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done
    assert "apt-get install haproxy" in done.stderr, done.stderr
    assert not (tmp_path / "relay.db").exists(), "it migrated a store before failing"


def test_run_lb_serves_through_the_proxy_and_stops_on_ctrl_c(tmp_path):
    require_haproxy()
    for _ in range(50):  # the instances take the two ports after the proxy's
        port = free_port()
        if all(not run_lb.port_in_use("127.0.0.1", p) for p in (port + 1, port + 2)):
            break
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    procs = Processes(tmp_path, {**base_env(f"sqlite:///{tmp_path}/relay.db", NO_HIGHLEVEL,
                                            port),
                                 "WEB_INSTANCES": "2", "WEB_CONCURRENCY": "1",
                                 "XDG_RUNTIME_DIR": str(run_dir), "TMPDIR": str(run_dir)})
    script = procs.start("run-lb", [sys.executable, "scripts/run_lb.py"])
    children: dict[str, int] = {}
    try:
        def both_serve() -> bool:
            assert script.running(), f"run_lb.py exited {script.returncode}"
            children.update((name, int(pid)) for name, pid in
                            re.findall(r"(\w+)\.1 started \(pid=(\d+)\)", script.stdout()))
            try:
                requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).close()
            except requests.ConnectionError:
                return False
            out = script.stdout()
            return all(re.search(rf'^\S+ {name}\.1 +\| .*"path":"/healthz"', out, re.M)
                       for name in ("web1", "web2"))

        wait_for(both_serve, timeout=60, what="both instances to answer through the proxy")
        out = script.stdout()
        assert "database at revision" in out  # migrated first
        assert f"HAProxy on http://127.0.0.1:{port}" in out
        assert set(children) == {"proxy", "web1", "web2", "worker"}, children
        os.killpg(script.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the foreground group
        script.wait(30)
        for name, pid in children.items():
            wait_for(lambda p=pid: not _group_alive(p), timeout=5, what=f"{name} to exit")
    finally:
        for pid in children.values():  # in sessions of their own: beyond procs.cleanup
            if _group_alive(pid):
                os.killpg(pid, signal.SIGKILL)
        procs.cleanup()
        shutil.rmtree(ROOT / "instance" / f"run-lb-{port}", ignore_errors=True)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
