"""The delivery log API and CLI, dead-letter replay and pruning."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from service.store.db import delivery_log
from service.store.deliverylog import LogFilter, prune
from service.store.queue import Outcome

from .conftest import T0, admin_headers, ingest_headers, make_view


def attempt(store, document_id, outcome, now, **extra):
    """Record one view of ``document_id`` and one attempt with ``outcome``."""
    [accepted] = store.record_views([make_view(now, document_id=document_id)], now=now)
    [claim] = [c for c in store.claim_due(now=now, limit=50) if c.document_id == document_id]
    store.record_outcomes([(claim, outcome)], now=now)
    return accepted


DEAD_404 = Outcome("dead", "permanent", http_status=404, message="Invoice not found",
                   trace_id="trace-1", latency_ms=12)
DEAD_EXPIRED = Outcome("dead", "expired", http_status=503, message="Service Unavailable")
OK = Outcome("delivered", "delivered", http_status=200, latency_ms=30)


@pytest.fixture
def log(store):
    attempt(store, "inv_a", OK, T0)
    attempt(store, "inv_b", DEAD_404, T0 + dt.timedelta(minutes=1))
    attempt(store, "inv_c", DEAD_EXPIRED, T0 + dt.timedelta(minutes=2))
    return store


def test_list_newest_first_with_details(client, log):
    resp = client.get("/v1/deliveries", headers=admin_headers())
    assert resp.status_code == 200
    rows = resp.json["deliveries"]
    assert [r["documentId"] for r in rows] == ["inv_c", "inv_b", "inv_a"]
    b = rows[1]
    assert (b["outcome"], b["httpStatus"], b["message"], b["traceId"], b["latencyMs"],
            b["viewsCovered"], b["attempt"]) == (
        "permanent", 404, "Invoice not found", "trace-1", 12, 1, 1)
    assert resp.json["nextCursor"] is None


@pytest.mark.parametrize(("query", "expected"), [
    ("outcome=permanent", ["inv_b"]),
    ("documentId=inv_a", ["inv_a"]),
    ("locationId=loc_1", ["inv_c", "inv_b", "inv_a"]),
    ("locationId=other", []),
    ("since=2026-01-05T12:01:00Z", ["inv_c", "inv_b"]),
    ("until=2026-01-05T12:01:00Z", ["inv_a"]),
])
def test_list_filters(client, log, query, expected):
    resp = client.get(f"/v1/deliveries?{query}", headers=admin_headers())
    assert [r["documentId"] for r in resp.json["deliveries"]] == expected


def test_cursor_pages_through_everything_once(client, store):
    for i in range(7):
        attempt(store, f"inv_{i}", OK, T0)
    seen, cursor = [], None
    for _ in range(10):
        url = "/v1/deliveries?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(url, headers=admin_headers()).json
        seen += [r["documentId"] for r in page["deliveries"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == [f"inv_{i}" for i in reversed(range(7))]


@pytest.mark.parametrize("query", ["limit=0", "limit=501", "cursor=abc", "since=yesterday",
                                   "locationId=bad%20id", "surprise=1", "outcome=bogus"])
def test_bad_queries_are_422_naming_the_parameter(client, query):
    resp = client.get(f"/v1/deliveries?{query}", headers=admin_headers())
    name = query.partition("=")[0]
    assert resp.status_code == 422 and list(resp.json["errors"]) == [name]
    assert resp.json["message"] == f"The query string is not valid: {name}"


def test_deliveries_need_the_admin_key(client):
    assert client.get("/v1/deliveries", headers=ingest_headers()).status_code == 403
    assert client.post("/v1/deliveries/replay", json={"all": True},
                       headers=ingest_headers()).status_code == 403
    assert client.get("/v1/deliveries").status_code == 401


def test_replay_requeues_dead_views_and_is_idempotent(client, log, services):
    resp = client.post("/v1/deliveries/replay", json={"outcome": "expired"},
                       headers=admin_headers())
    assert resp.json == {"replayed": 1}
    assert client.post("/v1/deliveries/replay", json={"outcome": "expired"},
                       headers=admin_headers()).json == {"replayed": 0}
    claims = services.store.claim_due(now=services.clock(), limit=10)
    assert [(c.document_id, c.views) for c in claims] == [("inv_c", 1)]
    assert services.store.queue_depth() == {"idle": 1, "dead": 1, "pending": 1}


def test_replayed_event_reports_queued_then_delivered(client, store, services):
    accepted = attempt(store, "inv_x", DEAD_EXPIRED, T0)
    assert store.event_status(accepted.id)["status"] == "failed"
    assert store.replay(LogFilter(document_id="inv_x"), now=T0) == 1
    assert store.event_status(accepted.id)["status"] == "queued"
    [claim] = store.claim_due(now=T0, limit=5)
    store.record_outcomes([(claim, OK)], now=T0)
    assert store.event_status(accepted.id)["status"] == "delivered"


@pytest.mark.parametrize(("body", "field"), [
    ({}, "_schema"), ({"all": False}, "_schema"), ({"outcome": "delivered"}, "outcome"),
    ({"locationId": "a b"}, "locationId"), ({"nope": 1}, "nope"),
])
def test_replay_needs_a_filter_or_all(client, body, field):
    resp = client.post("/v1/deliveries/replay", json=body, headers=admin_headers())
    assert resp.status_code == 422 and field in resp.json["errors"]


def test_replay_all_and_by_time(client, log):
    assert client.post("/v1/deliveries/replay", json={"until": "2026-01-05T12:01:30Z"},
                       headers=admin_headers()).json == {"replayed": 1}
    assert client.post("/v1/deliveries/replay", json={"all": True},
                       headers=admin_headers()).json == {"replayed": 1}


def test_cli_deliveries_and_replay(runner, log):
    table = runner.invoke(args=["deliveries", "--outcome", "permanent"])
    assert table.exit_code == 0
    lines = table.output.strip().splitlines()
    assert lines[0].split()[:3] == ["at", "location", "kind"]
    assert len(lines) == 2 and "inv_b" in lines[1] and "Invoice not found" in lines[1]
    assert runner.invoke(args=["replay"]).exit_code != 0  # no filter, no --all
    assert "replayed 1 document(s)" in runner.invoke(
        args=["replay", "--document", "inv_b"]).output
    assert "replayed 0 document(s)" in runner.invoke(
        args=["replay", "--document", "inv_b"]).output


@pytest.mark.parametrize(("options", "expected"), [
    (["--since", "2026-01-05 12:01:00"], ["inv_c", "inv_b"]),
    (["--until", "2026-01-05 12:01:00"], ["inv_a"]),
    (["--location", "loc_1", "--document", "inv_a"], ["inv_a"]),
])
def test_cli_filters_as_the_api_does(runner, log, options, expected):
    """The CLI's times have no offset: UTC, so the same rows as the API's ...Z."""
    table = runner.invoke(args=["deliveries", *options])
    assert table.exit_code == 0, table.output
    assert [line.split()[4] for line in table.output.splitlines()[1:]] == expected


def test_prune_deletes_only_old_rows(store):
    attempt(store, "inv_old", OK, T0 - dt.timedelta(days=40))
    attempt(store, "inv_new", OK, T0)
    assert prune(store.engine, older_than=T0 - dt.timedelta(days=30), batch=1) == 1
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(delivery_log.c.document_id)).scalars().all() == [
            "inv_new"]


def test_prune_walks_the_oldest_rows_in_batches_until_none_is_old(store):
    for i in range(5):
        attempt(store, f"inv_old{i}", OK, T0 - dt.timedelta(days=40, minutes=i))
    attempt(store, "inv_new", OK, T0)
    assert prune(store.engine, older_than=T0 - dt.timedelta(days=30), batch=2) == 5
    assert prune(store.engine, older_than=T0 - dt.timedelta(days=30), batch=2) == 0
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(delivery_log.c.document_id)).scalars().all() == [
            "inv_new"]
