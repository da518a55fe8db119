"""Observability: ``GET /metrics`` (Prometheus text), the request id, structured access logs.

The metric objects live for the whole test session (prometheus_client's idiom), so each
test compares a scrape before and after what it does.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import secrets
import socket
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from service import create_app
from service.config import ConfigError, load_config
from service.forward.credentials import TokenProvider
from service.forward.forwarder import Forwarder
from service.highlevel.client import HighLevelClient, build_pool
from service.ingest.pixels import PixelTarget
from service.logging import RequestIdFilter
from service.metrics import exposition

from .conftest import ingest_headers, make_event, make_view, test_config
from .fake_highlevel import FakeHighLevel
from .fakes import InlineExecutor
from .processes import Processes, flask, free_port, gunicorn, wait_for

LOC = "loc_metrics"
PIT = "pit-metrics-" + secrets.token_hex(8)
CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/126.0.0.0 Safari/537.36")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, keyed by (sample name, sorted labels)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape(client) -> Samples:
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    return parse(resp.get_data(as_text=True))


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.fixture
def hl():
    with FakeHighLevel(tokens={PIT}, enforce_rate_limit=False) as server:
        yield server
    assert server.violations == [], server.violations


@pytest.fixture
def app(migrated_db_url, clock, hl):
    """The conftest app, talking to the fake HighLevel as an OAuth app."""
    app = create_app(test_config(migrated_db_url, HIGHLEVEL_BASE_URL=hl.url,
                                 HIGHLEVEL_CLIENT_ID=hl.oauth.client_id,
                                 HIGHLEVEL_CLIENT_SECRET=hl.oauth.client_secret))
    app.extensions["service"].clock = clock
    yield app
    app.extensions["service"].engine.dispose()


@pytest.fixture
def forwarder(services, hl, clock):
    with build_pool(4, hl.url) as session:
        yield Forwarder(services.store, services.vault, HighLevelClient(session, hl.url),
                        executor=InlineExecutor(), clock=clock, rand=lambda: 1.0,
                        tokens=TokenProvider(services.vault, services.oauth))


def ingest(client, body, **headers):
    resp = client.post("/v1/events", json=body, headers=ingest_headers(**headers))
    assert resp.status_code == 202, resp.get_json()
    return resp


def pixel_token(services, document_id: str) -> str:
    return services.pixel_signer.sign(PixelTarget("invoice", LOC, document_id, None))


# -- ingest ---------------------------------------------------------------------------------


def test_ingest_counts_views_by_source_verdict_and_status(client, services):
    before = scrape(client)
    ingest(client, {"events": [
        make_event(locationId=LOC, invoiceId="inv_1", eventId="evt-m-1"),
        make_event(locationId=LOC, invoiceId="inv_1"),  # coalesced: inv_1 is waiting
        make_event(locationId=LOC, invoiceId="inv_1"),  # coalesced
        make_event(locationId=LOC, invoiceId="inv_2"),
        make_event(locationId=LOC, invoiceId="inv_3", userAgent="Googlebot/2.1"),  # filtered
    ]})
    ingest(client, make_event(locationId=LOC, invoiceId="inv_1", eventId="evt-m-1"))  # repeat
    assert client.get(f"/v1/pixel/{pixel_token(services, 'inv_1')}.gif",
                      headers={"User-Agent": CHROME}).status_code == 200  # coalesced
    assert client.post(f"/v1/beacon/{pixel_token(services, 'inv_9')}",
                       headers={"User-Agent": CHROME}).status_code == 204
    assert client.get("/v1/pixel/forged.gif").status_code == 200  # records nothing
    after = scrape(client)

    received = "relay_events_received_total"
    assert delta(before, after, received, source="api", verdict="human", status="queued") == 4
    assert delta(before, after, received, source="api", verdict="bot", status="filtered") == 1
    assert delta(before, after, received, source="api", verdict="human", status="duplicate") == 1
    assert delta(before, after, received, source="pixel", verdict="human", status="queued") == 1
    assert delta(before, after, received, source="beacon", verdict="human", status="queued") == 1
    assert delta(before, after, "relay_views_coalesced_total") == 3
    # The queue depth is read from the store at scrape time (this test's own database).
    assert value(after, "relay_queue_depth", status="pending") == 3  # inv_1, inv_2, inv_9
    assert value(after, "relay_queue_depth", status="idle") == 0
    assert value(after, "relay_store_up") == 1


# -- forwarding -----------------------------------------------------------------------------


def test_forwarding_counts_sends_retries_429s_latency_and_refreshes(client, services, hl,
                                                                     forwarder, clock):
    pair = hl.oauth.issue(location_id=LOC, expires_in=120)  # inside the refresh margin
    services.vault.set_token(LOC, access_token=pair["access_token"],
                             refresh_token=pair["refresh_token"], token_kind="oauth",
                             expires_at=clock() + dt.timedelta(seconds=120), now=clock())
    services.store.record_views([make_view(clock(), location_id=LOC, document_id=doc)
                                 for doc in ("inv_ok", "inv_busy")], now=clock())
    services.store.record_views([make_view(clock(), location_id="loc_no_token")], now=clock())
    hl.script(429, document_id="inv_busy")
    before = scrape(client)

    clock.advance(5)
    assert forwarder.forward_once(now=clock()) == 3
    after = scrape(client)

    sends = "relay_sends_total"
    assert delta(before, after, sends, outcome="delivered", http_status="200") == 1
    assert delta(before, after, sends, outcome="rate_limited", http_status="429") == 1
    assert delta(before, after, sends, outcome="no_token", http_status="none") == 1
    assert delta(before, after, "relay_retries_total", reason="rate_limited") == 1
    assert delta(before, after, "relay_rate_limited_total") == 1
    assert delta(before, after, "relay_send_latency_seconds_count") == 2  # two HTTP answers
    # Delivered 5 s (the test clock) after its view was received.
    assert delta(before, after, "relay_view_to_delivery_seconds_count") == 1
    assert delta(before, after, "relay_view_to_delivery_seconds_sum") == pytest.approx(5.0)
    assert delta(before, after, "relay_view_to_delivery_seconds_bucket", le="5.0") == 1
    assert delta(before, after, "relay_view_to_delivery_seconds_bucket", le="2.5") == 0
    assert delta(before, after, "relay_token_refreshes_total", result="ok") == 1
    assert hl.oauth.refresh_calls == 1
    assert value(after, "relay_queue_depth", status="idle") == 1
    assert value(after, "relay_queue_depth", status="pending") == 1  # the 429, due later
    assert value(after, "relay_queue_depth", status="blocked") == 1  # no token


def test_a_refused_refresh_counts_as_failed(client, services, hl, forwarder, clock):
    pair = hl.oauth.issue(location_id=LOC, expires_in=60)
    services.vault.set_token(LOC, access_token=pair["access_token"],
                             refresh_token=pair["refresh_token"], token_kind="oauth",
                             expires_at=clock() + dt.timedelta(seconds=60), now=clock())
    # Another app instance spends the single-use refresh token behind the relay's back.
    with requests.post(hl.url + "/oauth/token", timeout=5, data={
            "client_id": hl.oauth.client_id, "client_secret": hl.oauth.client_secret,
            "grant_type": "refresh_token", "refresh_token": pair["refresh_token"],
            "user_type": "Location"}) as resp:
        assert resp.status_code == 200
    clock.advance(61)
    services.store.record_views([make_view(clock(), location_id=LOC)], now=clock())
    before = scrape(client)
    forwarder.forward_once(now=clock())
    after = scrape(client)
    assert delta(before, after, "relay_token_refreshes_total", result="failed") == 1
    assert delta(before, after, "relay_token_refreshes_total", result="ok") == 0
    assert delta(before, after, "relay_sends_total", outcome="no_token", http_status="none") == 1


@pytest.mark.parametrize("url", [
    "sqlite:///{tmp}/no-such-dir/relay.db",
    "postgresql://relay@127.0.0.1:{port}/relay?connect_timeout=2",
])
def test_a_scrape_answers_when_the_store_is_down(url, tmp_path, caplog):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = create_app(test_config(url.format(tmp=tmp_path, port=port)))
    logging.getLogger().addHandler(caplog.handler)  # create_app's dictConfig dropped it
    try:
        samples = scrape(app.test_client())
    finally:
        app.extensions["service"].engine.dispose()
    assert value(samples, "relay_store_up") == 0
    assert not any(name == "relay_queue_depth" for name, _ in samples)
    assert ("relay_rate_limited_total", ()) in samples  # the rest is still there
    assert "metrics.store_unreachable" in caplog.messages


def test_metrics_need_no_key_and_honour_openmetrics(client):
    resp = client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
    assert resp.get_data(as_text=True).rstrip().endswith("# EOF")


# -- request id -----------------------------------------------------------------------------


def test_request_id_follows_a_view_to_the_forwarders_log_line(client, services, hl, forwarder,
                                                              clock, caplog):
    services.vault.set_token(LOC, access_token=PIT, now=clock())
    caplog.handler.addFilter(RequestIdFilter())  # as the service's stdout handler does
    caplog.set_level(logging.INFO)

    resp = ingest(client, make_event(locationId=LOC, invoiceId="inv_rid"),
                  **{"X-Request-ID": "abc"})
    assert resp.headers["X-Request-ID"] == "abc"
    resp = client.get(f"/v1/pixel/{pixel_token(services, 'inv_pix')}.gif",
                      headers={"User-Agent": CHROME, "X-Request-ID": "pix-1"})
    assert resp.headers["X-Request-ID"] == "pix-1"
    # The request's own log lines carry it too.
    client.get("/v1/pixel/forged.gif", headers={"X-Request-ID": "forged-1"})
    [invalid] = [r for r in caplog.records if r.getMessage() == "pixel.invalid_token"]
    assert invalid.request_id == "forged-1"

    forwarder.forward_once(now=clock())
    attempts = {r.document_id: r for r in caplog.records if r.getMessage() == "delivery.attempt"}
    assert attempts["inv_rid"].request_id == "abc"
    assert attempts["inv_pix"].request_id == "pix-1"
    assert attempts["inv_rid"].outcome == "delivered"


@pytest.mark.parametrize("sent", [None, "", "has spaces", "x" * 65, "semi;colon"])
def test_a_missing_or_unusable_request_id_is_replaced(client, sent):
    headers = {} if sent is None else {"X-Request-ID": sent}
    resp = client.get("/healthz", headers=headers)
    assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["X-Request-ID"])


# -- the forwarder's own endpoint -----------------------------------------------------------


@pytest.mark.parametrize(("raw", "address"), [
    ("9102", ("0.0.0.0", 9102)),
    ("127.0.0.1:9102", ("127.0.0.1", 9102)),
    ("[::1]:9102", ("::1", 9102)),
])
def test_forwarder_metrics_port_setting(raw, address):
    assert load_config({"FORWARDER_METRICS_PORT": raw}, test_config("sqlite://")) \
        ["FORWARDER_METRICS_PORT"] == address
    assert load_config({}, test_config("sqlite://"))["FORWARDER_METRICS_PORT"] is None


@pytest.mark.parametrize("raw", ["http", "0", "70000", "host:"])
def test_forwarder_metrics_port_setting_is_checked(raw):
    with pytest.raises(ConfigError, match="FORWARDER_METRICS_PORT"):
        load_config({"FORWARDER_METRICS_PORT": raw}, test_config("sqlite://"))


def test_forwarder_serves_its_metrics_while_it_runs(migrated_db_url, hl, monkeypatch):
    port = free_port()
    app = create_app(test_config(migrated_db_url, HIGHLEVEL_BASE_URL=hl.url,
                                 FORWARDER_METRICS_PORT=("127.0.0.1", port)))
    runner = app.test_cli_runner()
    runner.invoke(args=["tokens", "set", LOC, "--access-token", PIT])
    app.extensions["service"].store.record_views(
        [make_view(dt.datetime.now(dt.UTC), location_id=LOC)],
        now=dt.datetime.now(dt.UTC))
    seen = []
    forward_once = Forwarder.forward_once

    def forward_and_scrape(self, **kwargs):  # scrape mid-run, while the endpoint is up
        handled = forward_once(self, **kwargs)
        with requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            seen.append(parse(resp.text))
        return handled

    monkeypatch.setattr(Forwarder, "forward_once", forward_and_scrape)
    before = parse(exposition()[0].decode())
    result = runner.invoke(args=["forwarder", "--once"])
    app.extensions["service"].engine.dispose()
    assert result.exit_code == 0, result.output
    assert delta(before, seen[0], "relay_sends_total", outcome="delivered",
                 http_status="200") == 1
    with socket.socket() as sock:  # nothing listens there any more (TIME_WAIT aside)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()


# -- real gunicorn: the multiprocess mode ---------------------------------------------------


@pytest.mark.e2e
def test_gunicorn_workers_add_up_and_logs_are_structured(tmp_path):
    from .processes import ADMIN_KEY, INGEST_KEY, base_env, json_lines, stop_cleanly

    token = "pit-e2e-" + secrets.token_hex(8)
    fake = FakeHighLevel(tokens={token}, enforce_rate_limit=False).start()
    port, metrics_port = free_port(), free_port()
    temp = tmp_path / "tmp"  # gunicorn makes its metrics directory here (TMPDIR)
    temp.mkdir()
    (tmp_path / "logs").mkdir()
    env = base_env(f"sqlite:///{tmp_path}/relay.db", fake.url, port)
    env.update(TMPDIR=str(temp), XDG_RUNTIME_DIR=str(temp))
    procs = Processes(tmp_path / "logs", env)
    base = f"http://127.0.0.1:{port}"

    def call(method, path, *, key=INGEST_KEY, **kwargs):
        # A new connection each time (no keep-alive), so both workers get requests.
        headers = {"Authorization": f"Bearer {key}", "Connection": "close",
                   **kwargs.pop("headers", {})}
        resp = requests.request(method, base + path, headers=headers, timeout=10, **kwargs)
        resp.close()
        return resp

    def access_lines():
        return [r for r in json_lines(web.stdout()) if r.get("event") == "http.request"]

    try:
        procs.run("db-upgrade", flask("db", "upgrade"))
        web = procs.start("gunicorn", gunicorn())

        def ready():
            assert web.running(), f"gunicorn exited {web.returncode}"
            try:
                return call("GET", "/readyz").status_code == 200
            except (requests.ConnectionError, requests.Timeout):
                # Listening before a worker has loaded the app: on a loaded machine the
                # first answer can take longer than a request's timeout.
                return False

        wait_for(ready, timeout=30, what="GET /readyz 200")
        wait_for(lambda: web.stdout().count("Booting worker") >= 2, timeout=20,
                 what="2 gunicorn workers")
        [metrics_dir] = temp.glob("relay-metrics-*")
        assert call("PUT", f"/v1/locations/{LOC}/token", key=ADMIN_KEY,
                    json={"accessToken": token}).status_code == 200

        # Events until both workers have taken some (each POST on a new connection).
        posted = 0
        for _ in range(10):
            for _ in range(10):
                assert call("POST", "/v1/events", json=make_event(
                    locationId=LOC, invoiceId=f"inv_{posted % 5}")).status_code == 202
                posted += 1
            pids = {r["pid"] for r in access_lines() if r["path"] == "/v1/events"}
            if len(pids) >= 2:
                break
        assert len(pids) == 2, f"one worker took all {posted} events"
        started = time.monotonic()
        traced = call("POST", "/v1/events", headers={"X-Request-ID": "e2e-rid-1"},
                      json=make_event(locationId=LOC, invoiceId="inv_traced"))
        traced_ms = (time.monotonic() - started) * 1000
        assert traced.headers["X-Request-ID"] == "e2e-rid-1"
        posted += 1

        # Whichever worker answers a scrape reports what both received.
        for _ in range(6):
            samples = parse(call("GET", "/metrics").text)
            assert value(samples, "relay_events_received_total", source="api",
                         verdict="human", status="queued") == posted
            assert value(samples, "relay_store_up") == 1
            assert value(samples, "relay_queue_depth", status="pending") == 6  # documents
        files = {p.name for p in metrics_dir.iterdir()}
        assert {f"counter_{pid}.db" for pid in pids} <= files

        # The forwarder (started now, so each document is one PATCH) serves its own metrics.
        forwarder = procs.start("forwarder", flask("forwarder"),
                                FORWARDER_METRICS_PORT=f"127.0.0.1:{metrics_port}")

        def delivered():
            try:
                with requests.get(f"http://127.0.0.1:{metrics_port}/metrics",
                                  timeout=5) as resp:
                    samples = parse(resp.text)
            except requests.ConnectionError:
                return None  # not listening yet
            return value(samples, "relay_sends_total", outcome="delivered",
                         http_status="200") == 6 and samples
        samples = wait_for(delivered, timeout=20, what="6 deliveries on the forwarder's port")
        assert value(samples, "relay_view_to_delivery_seconds_count") == 6
        assert value(samples, "relay_send_latency_seconds_count") == 6
        assert len(fake.patches()) == 6

        stop_cleanly(web, forwarder)
        assert not metrics_dir.exists(), "gunicorn left its metrics directory behind"
    finally:
        procs.cleanup()
        fake.stop()
    assert fake.violations == []

    # The request id: echoed, in the access line, in the forwarder's line for the same view.
    [access] = [r for r in access_lines() if r.get("request_id") == "e2e-rid-1"]
    assert (access["method"], access["path"], access["status"], access["level"]) == (
        "POST", "/v1/events", 202, "info")
    assert access["logger"] == "gunicorn.access"
    assert 0 < access["duration_ms"] <= traced_ms  # milliseconds, of this request
    [attempt] = [r for r in json_lines(forwarder.stdout())
                 if r.get("event") == "delivery.attempt" and r["document_id"] == "inv_traced"]
    assert attempt["request_id"] == "e2e-rid-1"
    # Every line gunicorn wrote is JSON (LOG_FORMAT=json), its own start-up lines too.
    lines = [line for line in web.stdout().splitlines() if line.strip()]
    assert all(line.startswith("{") for line in lines), lines[:5]
    assert any(r.get("event") == "metrics.multiprocess_dir" for r in json_lines(web.stdout()))
