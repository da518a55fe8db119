"""Bounded storage: a client's repeats fold into one row, finished events are pruned, a
client's address is reduced before it is stored, and a location can be erased."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from service.forward.forwarder import Forwarder
from service.store.clients import retain_ip
from service.store.db import (
    delivery_log,
    documents,
    events,
    installs,
    known_locations,
    locations,
    pixel_prefixes,
    rate_limits,
    view_counts,
)
from service.store.prefixes import create_prefix
from service.store.retention import prune_events, purge_location

from .conftest import T0, admin_headers, ingest_headers, make_event, make_view, test_config
from .fakes import FakeHighLevelClient, InlineExecutor
from .test_pixel import CHROME, INV, LOC, token_for

SAFARI = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Version/17.5"


def rows(services, *columns):
    with services.engine.connect() as conn:
        return conn.execute(sa.select(*(columns or (events,))).order_by(
            events.c.received_at, events.c.id)).all()


def get_pixel(client, *, ua=CHROME, ip="198.51.100.23", token=None):
    return client.get(f"/v1/pixel/{token or token_for()}.gif", headers={"User-Agent": ua},
                      environ_base={"REMOTE_ADDR": ip})


# -- repeats of one client fold into one row ----------------------------------------------


def test_300_replays_of_one_pixel_store_one_row_counting_300(client, services):
    for _ in range(300):
        assert get_pixel(client).status_code == 200
    [row] = rows(services, events.c.views, events.c.document_id)
    assert tuple(row) == (300, INV)
    # Still one view of the document to send, and every view counted.
    with services.engine.connect() as conn:
        assert conn.execute(sa.select(documents.c.views_seq)).scalar() == 1
    page = services.store.location(LOC, now=services.clock())
    assert page["verdicts"] == {"human": 300}


def test_repeats_are_still_counted_in_metrics(client, services):
    def counted(name, **labels):
        text = client.get("/metrics").get_data(as_text=True)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    return sample.value
        return 0.0

    received = ("relay_events_received_total", {"source": "pixel", "verdict": "human"})
    before = counted(received[0], **received[1]), counted("relay_views_repeated_total")
    for _ in range(5):
        get_pixel(client)
    assert counted(received[0], **received[1]) - before[0] == 5
    assert counted("relay_views_repeated_total") - before[1] == 4


def test_other_clients_documents_and_windows_get_rows_of_their_own(client, services, clock):
    get_pixel(client)
    get_pixel(client, ua=SAFARI)  # another user agent
    get_pixel(client, ip="203.0.113.9")  # another network
    get_pixel(client, token=token_for(document="OTHER_DOC"))  # another document
    get_pixel(client)  # a repeat of the first
    clock.advance(60)  # the next window
    get_pixel(client)
    counted = sorted(r.views for r in rows(services, events.c.views))
    assert counted == [1, 1, 1, 1, 2]


def test_events_with_an_event_id_never_fold(client, services):
    for i in range(3):
        post = client.post("/v1/events", headers=ingest_headers(), json=make_event(
            eventId=f"e{i}", userAgent=CHROME, ip="198.51.100.23"))
        assert post.json["status"] == "queued"
    assert [r.views for r in rows(services, events.c.views)] == [1, 1, 1]


def test_api_views_from_one_client_fold_and_answer_the_stored_id(client, services):
    body = make_event(userAgent=CHROME, ip="198.51.100.23")
    first = client.post("/v1/events", headers=ingest_headers(), json=body).json
    again = client.post("/v1/events", headers=ingest_headers(), json=body).json
    assert again == {"id": first["id"], "status": "queued"}
    assert [r.views for r in rows(services, events.c.views)] == [2]


def test_repeats_within_one_batch_fold_too(client, services):
    body = {"events": [make_event(userAgent=CHROME, ip="198.51.100.23")] * 4}
    answers = client.post("/v1/events", headers=ingest_headers(), json=body).json["events"]
    assert len({a["id"] for a in answers}) == 1
    assert [r.views for r in rows(services, events.c.views)] == [4]


# -- the client's address, reduced before it is stored ------------------------------------


@pytest.mark.parametrize(("mode", "ip", "kept"), [
    ("truncate", "198.51.100.23", "198.51.100.0"),
    ("truncate", "2001:db8:1234:5678::1", "2001:db8:1234::"),
    ("truncate", "::ffff:198.51.100.23", "198.51.100.0"),
    ("truncate", "not an address", None),
    ("full", "198.51.100.23", "198.51.100.23"),
    ("none", "198.51.100.23", None),
    ("truncate", None, None),
])
def test_retain_ip(mode, ip, kept):
    assert retain_ip(ip, mode) == kept


@pytest.mark.parametrize(("mode", "kept"), [("truncate", "207.211.31.0"),
                                             ("full", "207.211.31.200"), ("none", None)])
def test_the_stored_address_follows_retain_client_ip(migrated_db_url, clock, mode, kept):
    from service import create_app

    app = create_app(test_config(migrated_db_url, RETAIN_CLIENT_IP=mode))
    app.extensions["service"].clock = clock
    try:
        get_pixel(app.test_client(), ip="207.211.31.200")
        [row] = rows(app.extensions["service"], events.c.ip, events.c.verdict)
        # 207.211.31.0/25 is a scanner's range: the verdict saw the full address (.200,
        # outside it), not the truncated one (.0, inside it).
        assert tuple(row) == (kept, "human")
    finally:
        app.extensions["service"].engine.dispose()


def test_verdicts_see_the_full_address(client, services):
    get_pixel(client, ip="207.211.31.5")
    [row] = rows(services, events.c.ip, events.c.verdict)
    assert tuple(row) == ("207.211.31.0", "scanner")


# -- finished events are pruned after EVENT_RETENTION_DAYS --------------------------------


def record(store, at, **overrides):
    return store.record_views([make_view(at, **overrides)], now=at)[0].id


def set_status(services, document_id, status):
    with services.engine.begin() as conn:
        conn.execute(documents.update().where(documents.c.document_id == document_id)
                     .values(status=status))


def test_prune_keeps_what_is_young_or_unfinished(services, store):
    old = T0 - dt.timedelta(days=31)
    delivered = record(store, old, document_id="delivered")
    dead = record(store, old, document_id="dead")
    waiting = record(store, old, document_id="waiting")  # still pending: kept
    parked = record(store, old, document_id="parked")
    filtered = record(store, old, document_id="bot", forward=False, verdict="bot")
    young = record(store, T0 - dt.timedelta(days=29), document_id="delivered")
    set_status(services, "delivered", "idle")
    set_status(services, "dead", "dead")
    set_status(services, "parked", "blocked")
    pruned = prune_events(services.engine, older_than=T0 - dt.timedelta(days=30), batch=2)
    assert pruned == 3
    left = {r.id for r in rows(services, events.c.id)}
    assert left == {waiting, parked, young}
    assert {delivered, dead, filtered}.isdisjoint(left)


def test_prune_works_in_bounded_batches(services, store):
    old = T0 - dt.timedelta(days=40)
    for i in range(7):
        record(store, old + dt.timedelta(seconds=i), document_id=f"d{i}", forward=False,
               verdict="bot")
    statements = []

    def count(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("DELETE"):
            statements.append(cursor.rowcount)

    sa.event.listen(services.engine, "after_cursor_execute", count)
    try:
        assert prune_events(services.engine, older_than=T0, batch=3) == 7
    finally:
        sa.event.remove(services.engine, "after_cursor_execute", count)
    assert statements == [3, 3, 1]
    assert rows(services) == []


def test_the_forwarders_hourly_job_prunes_events(services, store, vault, clock):
    record(store, T0 - dt.timedelta(days=31), forward=False, verdict="bot")
    keep = record(store, T0 - dt.timedelta(days=2), forward=False, verdict="bot")
    forwarder = Forwarder(store, vault, FakeHighLevelClient(), executor=InlineExecutor(),
                          clock=clock, event_days=30)
    forwarder.forward_once(now=T0)
    assert [r.id for r in rows(services, events.c.id)] == [keep]
    forwarder = Forwarder(store, vault, FakeHighLevelClient(), executor=InlineExecutor(),
                          clock=clock, event_days=1)
    forwarder.forward_once(now=T0)
    assert rows(services) == []


# -- erasure: everything stored for a location --------------------------------------------


def fill(services, store, vault, location_id):
    now = T0
    record(store, now, location_id=location_id)
    record(store, now, location_id=location_id, document_id="inv_2", forward=False,
           verdict="bot")
    vault.set_token(location_id, access_token=f"pit-{location_id}-secret", now=now)
    create_prefix(services.engine, location_id, kind="invoice", now=now)
    with services.engine.begin() as conn:
        row = conn.execute(sa.select(documents.c.id).where(
            documents.c.location_id == location_id)).scalar()
        conn.execute(delivery_log.insert().values(
            at=now, document_row=row, kind="invoice", location_id=location_id,
            document_id="inv_1", attempt=1, outcome="delivered", views_covered=1, seq_to=1))
        conn.execute(installs.insert().values(target_type="location", target_id=location_id,
                                              company_id="C1", status="installed",
                                              updated_at=now))
        conn.execute(rate_limits.insert().values(
            resource=location_id, burst_max=100, interval_ms=10000, daily_max=200000,
            used=1, daily_used=1, updated_at=now))


def remaining(services, location_id) -> dict:
    checks = {"events": events.c.location_id, "documents": documents.c.location_id,
              "deliveries": delivery_log.c.location_id, "tokens": locations.c.location_id,
              "installs": installs.c.target_id, "rateLimits": rate_limits.c.resource,
              "viewCounts": view_counts.c.location_id,
              "knownLocations": known_locations.c.location_id,
              "pixelPrefixes": pixel_prefixes.c.location_id}
    with services.engine.connect() as conn:
        return {name: conn.execute(sa.select(sa.func.count()).where(
            column == location_id)).scalar() for name, column in checks.items()}


def test_delete_location_erases_it_and_nothing_else(client, services, store, vault):
    fill(services, store, vault, "GONE")
    fill(services, store, vault, "KEPT")
    store.count_views(now=T0 + dt.timedelta(hours=1))  # views by verdict; locations known
    resp = client.delete("/v1/locations/GONE", headers=admin_headers())
    assert resp.status_code == 200
    kept = {"events": 2, "documents": 1, "deliveries": 1, "tokens": 1, "installs": 1,
            "rateLimits": 1, "viewCounts": 2, "knownLocations": 1, "pixelPrefixes": 1}
    # (the filtered view has no document to send; its verdict is counted; no operator
    # notification was due, so none is deleted)
    assert resp.json == {"locationId": "GONE", "deleted": {**kept, "notifications": 0}}
    assert set(remaining(services, "GONE").values()) == {0}
    assert remaining(services, "KEPT") == kept
    again = client.delete("/v1/locations/GONE", headers=admin_headers())
    assert set(again.json["deleted"].values()) == {0}
    assert client.delete("/v1/locations/KEPT").status_code == 401
    assert remaining(services, "KEPT")["events"] == 2


def test_purge_command(runner, services, store, vault):
    fill(services, store, vault, "GONE")
    refused = runner.invoke(args=["purge", "GONE"], input="n\n")
    assert refused.exit_code == 1 and remaining(services, "GONE")["events"] == 2
    result = runner.invoke(args=["purge", "GONE", "--yes"])
    assert result.exit_code == 0, result.output
    assert "2 events" in result.output and "1 tokens" in result.output
    assert set(remaining(services, "GONE").values()) == {0}


def test_purge_in_batches_leaves_nothing(services, store, vault):
    for i in range(7):
        record(store, T0, location_id="GONE", document_id=f"d{i}")
    assert purge_location(services.engine, "GONE", batch=3)["events"] == 7
    assert set(remaining(services, "GONE").values()) == {0}


def test_recent_clients_forget_the_last_window_and_stay_bounded():
    from service.store.clients import RecentClients

    recent = RecentClients(limit=2)
    recent.remember(10, {"a": "e1"})
    assert (recent.get(10, "a"), recent.get(11, "a")) == ("e1", None)
    recent.remember(9, {"b": "late"})  # a late request of the last window: ignored
    assert (recent.get(9, "b"), recent.get(10, "a")) == (None, "e1")
    recent.remember(10, {"b": "e2"})
    recent.remember(10, {"c": "e3"})  # past the limit: not remembered
    assert [recent.get(10, k) for k in "abc"] == ["e1", "e2", None]
    recent.remember(11, {"c": "e4"})  # a new window starts empty
    assert [recent.get(11, k) for k in "abc"] == [None, None, "e4"]
