"""Operator notifications: written with the change they report, signed (Standard Webhooks),
posted to a real receiver on loopback that checks them with ``Webhook.verify``, retried,
recorded, once each, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import threading
import time

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY

from service import create_app
from service.clock import utcnow
from service.config import ConfigError, load_config
from service.forward.credentials import TokenProvider
from service.forward.notify import NotificationWatch, WebhookSender, run
from service.highlevel.oauth import INVALID_GRANT, OAuthError
from service.store import outbox
from service.store.db import no_token_alerts
from service.store.documents import Claim, Outcome
from service.store.engine import create_engine
from service.store.notifications import recent
from service.store.tokens import INVALID
from service.wiring import build_forwarder, build_sender

from .conftest import UNREACHABLE_DB_URL, Clock, admin_headers, make_view, test_config
from .fake_highlevel import FakeHighLevel
from .fakes import InlineExecutor
from .processes import free_port
from .webhook_receiver import WebhookReceiver

SECRET = "whsec_" + base64.b64encode(b"operator-notifications-test-key-32").decode()
TOKEN = "pit-5e6f7a8b-operator-test-token"
NEW_TOKEN = "pit-9c0d1e2f-replacement-token"
MINUTE = 60


@pytest.fixture
def clock():
    """Near the wall clock: receivers check ``webhook-timestamp`` against theirs."""
    return Clock(utcnow().replace(microsecond=0))


@pytest.fixture
def receiver():
    with WebhookReceiver(SECRET) as server:
        yield server


@pytest.fixture
def highlevel():
    """The fake HighLevel: accepts TOKEN only (anything else: 401, as HighLevel answers)."""
    with FakeHighLevel(tokens={TOKEN}, enforce_rate_limit=False) as server:
        yield server
    assert server.violations == [], server.violations


@pytest.fixture
def app(migrated_db_url, clock, receiver, highlevel):
    app = create_app(test_config(migrated_db_url, HIGHLEVEL_BASE_URL=highlevel.url,
                                 OPERATOR_WEBHOOK_URLS=[receiver.url],
                                 OPERATOR_WEBHOOK_SECRET=SECRET))
    app.extensions["service"].clock = clock
    yield app
    app.extensions["service"].engine.dispose()


def forward(services, times: int = 1) -> None:
    forwarder = build_forwarder(services, executor=InlineExecutor())
    for _ in range(times):
        forwarder.forward_once()


def views(services, location_id: str, *documents: str) -> None:
    now = services.clock()
    services.store.record_views([make_view(now, location_id=location_id, document_id=doc)
                                 for doc in documents], now=now)


def sender(services, **overrides) -> WebhookSender:
    """A sender with no jitter (each backoff is its longest), on the app's settings."""
    urls = overrides.pop("urls", None) or services.config["OPERATOR_WEBHOOK_URLS"]
    settings = {"clock": services.clock, "rand": lambda: 1.0, **overrides}
    return WebhookSender(services.engine, urls, SECRET, **settings)


def emit(services, location_id: str = "loc_1", type_: str = outbox.VIEWS_DEAD) -> None:
    with services.engine.begin() as conn:
        outbox.emit(conn, type_, location_id, {"count": 1}, now=services.clock())


def counted(type_: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("relay_operator_webhooks_total",
                                     {"type": type_, "outcome": outcome}) or 0.0


# -- what is told, once ---------------------------------------------------------------------


def test_a_token_turning_invalid_is_told_once_signed(services, vault, receiver, highlevel):
    vault.set_token("loc_1", access_token=NEW_TOKEN, now=services.clock())  # HighLevel: 401
    views(services, "loc_1", "inv_1", "inv_2")
    found_at = services.clock()
    forward(services)  # two 401s in a row: invalid; its views parked
    services.clock.advance(MINUTE)
    forward(services, times=2)
    with vault.hold("loc_1") as row:  # the same token found invalid again
        row.mark(status=INVALID, message="found again", now=services.clock())
    assert sender(services).send_due() == 1
    [told] = receiver.delivered()
    assert told["type"] == "token.invalid"
    assert told["data"] == {"locationId": "loc_1", "tokenKind": "pit",
                            "reason": "Invalid token: access token is invalid"}
    assert dt.datetime.fromisoformat(told["timestamp"]) == found_at
    [request] = receiver.received
    assert request.headers["Webhook-Id"].startswith("msg_")
    assert NEW_TOKEN not in request.body.decode() and TOKEN not in request.body.decode()
    # A new token that fails too is told again: once per token stored.
    vault.set_token("loc_1", access_token=NEW_TOKEN + "-2", now=services.clock())
    services.store.unblock(now=services.clock())
    forward(services)
    assert sender(services).send_due() == 1
    assert [p["type"] for p in receiver.delivered()] == ["token.invalid"] * 2


def test_views_going_dead_are_told_per_location(services, vault, receiver, highlevel):
    for location in ("loc_1", "loc_2"):
        vault.set_token(location, access_token=TOKEN, now=services.clock())
    highlevel.script(404, document_id="inv_1")
    highlevel.script(422, document_id="inv_2")
    highlevel.script(404, document_id="inv_9")
    views(services, "loc_1", "inv_1", "inv_2", "inv_3")
    views(services, "loc_2", "inv_9")
    forward(services)
    assert sender(services).send_due() == 2
    told = {p["data"]["locationId"]: p for p in receiver.delivered()}
    assert {p["type"] for p in told.values()} == {"views.dead"}
    one = told["loc_1"]["data"]
    assert (one["count"], one["views"], one["reasons"], one["truncated"]) == (
        2, 2, {"permanent": 2}, False)
    assert sorted((d["documentId"], d["httpStatus"]) for d in one["documents"]) == [
        ("inv_1", 404), ("inv_2", 422)]
    assert told["loc_2"]["data"]["documents"][0]["documentId"] == "inv_9"


def test_a_dead_batch_names_a_bounded_list_of_documents(services):
    claims = [(Claim(row_id=i, kind="invoice", location_id="loc_1", document_id=f"inv_{i}",
                     seq_from=0, seq_to=1, attempts=0, pending_since=services.clock(),
                     lease_token="x"), Outcome("dead", "expired", message="m" * 300))
              for i in range(60)]
    with services.engine.begin() as conn:
        assert outbox.views_dead(conn, claims, [True] * 59 + [False], now=services.clock()) == 1
    [row] = recent(services.engine)
    data = json.loads(row["payload"])["data"]
    assert (data["count"], data["truncated"], len(data["documents"])) == (59, True, 50)
    assert data["documents"][0]["message"] == "m" * 199 + "…"


def test_a_refused_refresh_token_is_told(services, vault):
    vault.set_token("loc_1", access_token=TOKEN, refresh_token="refresh-secret-1",
                    expires_at=services.clock() + dt.timedelta(seconds=30), now=services.clock())

    class Refusing:  # HighLevel's token endpoint, refusing the refresh token
        def refresh(self, refresh_token, *, user_type):
            raise OAuthError(INVALID_GRANT, "Invalid grant: refresh token is invalid",
                             status=400)

    stale = TokenProvider(vault).get("loc_1", now=services.clock())
    assert TokenProvider(vault, Refusing()).renew(stale, now=services.clock()) is None
    assert vault.describe("loc_1")["status"] == "invalid"
    [row] = recent(services.engine)
    assert json.loads(row["payload"])["data"] == {
        "locationId": "loc_1", "tokenKind": "oauth",
        "reason": "Invalid grant: refresh token is invalid"}
    assert "refresh-secret-1" not in row["payload"]


def test_marking_a_location_without_a_token_invalid_tells_nothing(services, vault):
    with vault.hold("loc_none") as row:
        row.mark(status=INVALID, message="no such row", now=services.clock())
    assert recent(services.engine) == []


def test_views_parked_without_a_token_too_long_are_told_once_per_episode(
        services, vault, receiver):
    services.clock.advance(-61 * MINUTE)  # so that the send below is signed near wall time
    views(services, "loc_9", "inv_1", "inv_2")
    forward(services)  # no token: parked
    services.clock.advance(30 * MINUTE)
    forward(services)
    assert recent(services.engine) == []  # not yet: 30 of 60 minutes
    services.clock.advance(31 * MINUTE)
    forward(services)
    for _ in range(3):  # every minute after: nothing new
        services.clock.advance(MINUTE)
        forward(services)
    assert sender(services).send_due() == 1
    [told] = receiver.delivered()
    assert told["type"] == "location.no_token"
    assert {k: told["data"][k] for k in ("locationId", "documents", "views",
                                         "thresholdMinutes")} == {
        "locationId": "loc_9", "documents": 2, "views": 2, "thresholdMinutes": 60}
    # Recovery re-arms it: a token, the views sent; then parked again, told again.
    vault.set_token("loc_9", access_token=TOKEN, now=services.clock())
    services.store.unblock(now=services.clock())
    forward(services)
    services.clock.advance(MINUTE)
    forward(services)
    with services.engine.connect() as conn:
        assert conn.execute(sa.select(no_token_alerts)).all() == []
    vault.delete_token("loc_9")
    views(services, "loc_9", "inv_3")
    forward(services)
    services.clock.advance(61 * MINUTE)
    forward(services)
    assert [r["type"] for r in recent(services.engine)] == ["location.no_token"] * 2


# -- delivery: retries, records, once ------------------------------------------------------


def test_a_failing_receiver_is_retried_with_backoff_and_told_once(services, receiver):
    receiver.script(500, (503, {"Retry-After": "30"}))
    emit(services)
    before = counted("views.dead", "retry"), counted("views.dead", "delivered")
    webhooks = sender(services)
    assert webhooks.send_due() == 1  # 500: again in 2 s (base 2 s, no jitter)
    assert webhooks.send_due() == 0
    services.clock.advance(2)
    assert webhooks.send_due() == 1  # 503 with Retry-After: 30 s
    services.clock.advance(29)
    assert webhooks.send_due() == 0
    services.clock.advance(1)
    assert webhooks.send_due() == 1
    services.clock.advance(3600)
    assert webhooks.send_due() == 0
    assert [r.status for r in receiver.received] == [500, 503, 200]
    assert len({r.headers["Webhook-Id"] for r in receiver.received}) == 1
    assert all(r.verified for r in receiver.received)  # signed afresh each time
    [delivery] = recent(services.engine)[0]["deliveries"]
    assert (delivery["status"], delivery["attempts"], delivery["lastStatus"]) == (
        "delivered", 3, 200)
    assert [(a["outcome"], a["httpStatus"], a["error"]) for a in delivery["history"]] == [
        ("retry", 500, "HTTP 500"), ("retry", 503, "HTTP 503"), ("delivered", 200, None)]
    assert (counted("views.dead", "retry"), counted("views.dead", "delivered")) == (
        before[0] + 2, before[1] + 1)


def test_a_notification_is_given_up_after_a_day(services, receiver):
    receiver.script(*[500] * 5)
    emit(services)
    webhooks = sender(services)
    webhooks.send_due()
    services.clock.advance(86_400)
    failed = counted("views.dead", "failed")
    assert webhooks.send_due() == 1
    services.clock.advance(86_400)
    assert webhooks.send_due() == 0
    [delivery] = recent(services.engine)[0]["deliveries"]
    assert (delivery["status"], delivery["attempts"]) == ("failed", 2)
    assert counted("views.dead", "failed") == failed + 1


def test_an_unreachable_receiver_is_logged_without_its_url(services, caplog):
    url = f"http://127.0.0.1:{free_port()}/hooks/s3cr3t-path-token"
    caplog.set_level(logging.INFO, logger="service.forward.notify")
    emit(services)
    assert sender(services, urls=[url]).send_due() == 1
    [delivery] = recent(services.engine)[0]["deliveries"]
    assert (delivery["status"], delivery["lastError"]) == ("pending", "ConnectionError")
    assert delivery["host"] == url.rsplit("/hooks", 1)[0]
    [line] = [r for r in caplog.records if r.getMessage() == "notify.attempt"]
    assert (line.outcome, line.host, line.error) == ("retry", delivery["host"],
                                                     "ConnectionError")
    assert "s3cr3t" not in caplog.text


def test_a_destination_no_longer_configured_is_given_up(services, receiver):
    emit(services)
    assert sender(services, urls=["http://127.0.0.1:9/gone"]).send_due() == 1  # fails: retry
    services.clock.advance(10)
    assert sender(services).send_due() == 1  # that delivery's URL is not configured now
    [delivery] = recent(services.engine)[0]["deliveries"]
    assert (delivery["status"], delivery["lastError"]) == (
        "failed", "destination no longer in OPERATOR_WEBHOOK_URLS")
    assert receiver.received == []


def test_two_senders_post_each_notification_once(services, receiver, migrated_db_url):
    for n in range(8):
        emit(services, location_id=f"loc_{n}")
    receiver.delay = 0.05
    engines = [create_engine(migrated_db_url) for _ in range(2)]
    senders = [WebhookSender(engine, [receiver.url], SECRET, clock=services.clock, batch=3)
               for engine in engines]
    start = threading.Barrier(2)

    def drain(one: WebhookSender) -> None:
        start.wait()
        for _ in range(20):
            if not one.send_due() and not one.send_due():
                return

    threads = [threading.Thread(target=drain, args=(one,)) for one in senders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for engine in engines:
        engine.dispose()
    ids = [r.headers["Webhook-Id"] for r in receiver.received]
    assert len(ids) == len(set(ids)) == 8
    assert {p["data"]["locationId"] for p in receiver.delivered()} == {
        f"loc_{n}" for n in range(8)}
    assert {(d["status"], d["attempts"]) for row in recent(services.engine)
            for d in row["deliveries"]} == {("delivered", 1)}


def test_the_sender_thread_posts_until_stopped(services, receiver):
    webhooks = build_sender(services)
    thread = threading.Thread(target=run, args=(webhooks,), kwargs={"idle": 0.01})
    thread.start()
    emit(services)
    receiver.wait_for(1)
    webhooks.stop.set()
    thread.join(10)
    assert not thread.is_alive()
    assert [p["type"] for p in receiver.delivered()] == ["views.dead"]


def test_a_stopped_sender_leaves_its_leases_to_come_due_again(services, receiver):
    emit(services, location_id="loc_1")
    emit(services, location_id="loc_2")
    stopping = sender(services)
    stopping.stop.set()
    assert stopping.send_due() == 0  # claimed, then stopped before posting
    assert sender(services).send_due() == 0  # still leased
    services.clock.advance(stopping.lease.total_seconds())
    assert sender(services).send_due() == 2
    assert len(receiver.delivered()) == 2


def test_the_sender_thread_outlives_a_store_outage(caplog):
    caplog.set_level(logging.ERROR, logger="service.forward.notify")
    engine = create_engine(UNREACHABLE_DB_URL)
    webhooks = WebhookSender(engine, ["http://127.0.0.1:9/hook"], SECRET)
    thread = threading.Thread(target=run, args=(webhooks,), kwargs={"idle": 0.01})
    thread.start()
    for _ in range(500):
        if len([r for r in caplog.records if r.getMessage() == "notify.error"]) >= 2:
            break
        time.sleep(0.01)
    webhooks.stop.set()
    thread.join(10)
    engine.dispose()
    assert not thread.is_alive()
    assert len([r for r in caplog.records if r.getMessage() == "notify.error"]) >= 2


def test_forwarder_once_posts_what_is_due(app, services, receiver):
    emit(services)
    result = app.test_cli_runner().invoke(args=["forwarder", "--once"])
    assert result.exit_code == 0, result.output
    assert [p["type"] for p in receiver.delivered()] == ["views.dead"]


def test_without_urls_notifications_are_kept_but_not_sent(migrated_db_url, clock):
    app = create_app(test_config(migrated_db_url))
    svc = app.extensions["service"]
    svc.clock = clock
    assert build_sender(svc) is None
    emit(svc)
    assert [row["deliveries"] for row in recent(svc.engine)] == [[]]
    svc.engine.dispose()


# -- retention ---------------------------------------------------------------------------


def test_old_notifications_are_pruned_with_the_delivery_log(services, receiver):
    emit(services)
    sender(services).send_due()
    watch = NotificationWatch(services.engine, keep=dt.timedelta(days=30))
    watch.tick(now=services.clock() + dt.timedelta(days=29))
    assert len(recent(services.engine)) == 1
    watch.tick(now=services.clock() + dt.timedelta(days=31))
    assert recent(services.engine) == []


def test_erasing_a_location_erases_its_notifications(client, services, receiver):
    emit(services, location_id="GONE")
    emit(services, location_id="KEPT")
    sender(services).send_due()
    resp = client.delete("/v1/locations/GONE", headers=admin_headers())
    assert resp.json["deleted"]["notifications"] == 1
    assert [row["locationId"] for row in recent(services.engine)] == ["KEPT"]
    assert recent(services.engine, location_id="GONE") == []


# -- settings ----------------------------------------------------------------------------

BAD_SECRET = "whsec_" + base64.b64encode(b"too short").decode()


@pytest.mark.parametrize(("settings", "message"), [
    ({"OPERATOR_WEBHOOK_URLS": "https://ops.example/hook"},
     "OPERATOR_WEBHOOK_SECRET is required when OPERATOR_WEBHOOK_URLS is set"),
    ({"OPERATOR_WEBHOOK_URLS": "ftp://ops.example/hook", "OPERATOR_WEBHOOK_SECRET": SECRET},
     "OPERATOR_WEBHOOK_URLS: each entry must be an http:// or https:// URL with a host"),
    ({"OPERATOR_WEBHOOK_URLS": "https://ok.example, ops.example/hook"},
     "OPERATOR_WEBHOOK_URLS: each entry must be"),
    ({"OPERATOR_WEBHOOK_URLS": "https://ops.example:99999/hook"},
     "OPERATOR_WEBHOOK_URLS: each entry must be"),
    ({"OPERATOR_WEBHOOK_SECRET": "operator-secret-without-prefix"},
     "OPERATOR_WEBHOOK_SECRET: must be whsec_ followed by base64 of 24 to 64 bytes"),
    ({"OPERATOR_WEBHOOK_SECRET": BAD_SECRET}, "OPERATOR_WEBHOOK_SECRET: must be whsec_"),
    ({"OPERATOR_WEBHOOK_SECRET": "whsec_not*base64*at*all*not*base64*at*all"},
     "OPERATOR_WEBHOOK_SECRET: must be whsec_"),
    ({"NO_TOKEN_ALERT_MINUTES": "0"}, "NO_TOKEN_ALERT_MINUTES: Must be greater than or equal"),
    ({"NO_TOKEN_ALERT_MINUTES": "an hour"}, "NO_TOKEN_ALERT_MINUTES: Not a valid integer"),
], ids=["urls without secret", "ftp", "no scheme", "bad port", "no prefix", "short secret",
        "not base64", "zero minutes", "words"])
def test_bad_notification_settings_are_refused_by_name(tmp_path, settings, message):
    with pytest.raises(ConfigError) as err:
        load_config({"RELAY_ENV": "development", **settings}, instance_path=tmp_path)
    assert message in str(err.value)
    assert "too short" not in str(err.value) and "without-prefix" not in str(err.value)


def test_notification_settings_parse(tmp_path):
    defaults = load_config({}, instance_path=tmp_path)
    assert (defaults["OPERATOR_WEBHOOK_URLS"], defaults["NO_TOKEN_ALERT_MINUTES"]) == (None, 60)
    cfg = load_config({"OPERATOR_WEBHOOK_URLS": "https://a.example/h, http://10.0.0.5:8080/h,"
                                                "https://a.example/h",
                       "OPERATOR_WEBHOOK_SECRET": SECRET, "NO_TOKEN_ALERT_MINUTES": "15"},
                      instance_path=tmp_path)
    assert cfg["OPERATOR_WEBHOOK_URLS"] == ["https://a.example/h", "http://10.0.0.5:8080/h"]
    assert (cfg["OPERATOR_WEBHOOK_SECRET"], cfg["NO_TOKEN_ALERT_MINUTES"]) == (SECRET, 15)
