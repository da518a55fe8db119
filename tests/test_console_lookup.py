"""The console's event lookup and delivery log: the API's data and filters, as pages."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from service.store.queue import Outcome

from .conftest import T0, ingest_headers, make_event, make_view
from .console import sign_in, text

DEAD_404 = Outcome("dead", "permanent", http_status=404, message="Invoice not found",
                   trace_id="trace-404", latency_ms=12)
OK = Outcome("delivered", "delivered", http_status=200, latency_ms=30)


def attempt(store, document_id: str, outcome: Outcome, now: dt.datetime, **view) -> None:
    store.record_views([make_view(now, document_id=document_id, **view)], now=now)
    [claim] = [c for c in store.claim_due(now=now, limit=50) if c.document_id == document_id]
    store.record_outcomes([(claim, outcome)], now=now)


@pytest.fixture
def console(client):
    sign_in(client)
    return client


def rows_of(page: str) -> list[str]:
    """The documents of the attempts table, top to bottom."""
    return re.findall(r"<td>(?:invoice|estimate) ([A-Za-z0-9_-]+)</td>", page)


def test_an_event_is_found_by_its_id_with_where_it_stands(console, client):
    accepted = client.post("/v1/events", json=make_event(eventId="crm-1"),
                           headers=ingest_headers()).json
    resp = console.get(f"/console/events?id={accepted['id']}")
    assert resp.status_code == 200
    shown = text(resp.text)
    assert f"Event {accepted['id']}" in shown
    assert "Status queued" in shown and "Invoice inv_1" in shown
    assert "Idempotency key crm-1" in shown
    assert 'href="/console/locations/loc_1"' in resp.text


@pytest.mark.parametrize("event_id", ["no-such-event", "x" * 65, "a\x00b"])
def test_an_unknown_event_is_a_404_page_that_says_so(console, event_id):
    resp = console.get("/console/events", query_string={"id": event_id})
    assert resp.status_code == 404
    assert "No event has the id" in resp.text


def test_the_lookup_form_alone(console):
    resp = console.get("/console/events")
    assert resp.status_code == 200
    assert '<label for="id">Event id</label>' in resp.text
    assert "No event has" not in resp.text


def test_the_delivery_log_shows_every_attempt_newest_first(console, store):
    attempt(store, "inv_a", OK, T0)
    attempt(store, "inv_b", DEAD_404, T0 + dt.timedelta(minutes=1))
    resp = console.get("/console/deliveries")
    assert resp.status_code == 200
    assert rows_of(resp.text) == ["inv_b", "inv_a"]
    shown = text(resp.text)
    assert "Invoice not found" in shown and "trace-404" in shown and "12 ms" in shown


@pytest.mark.parametrize(("query", "expected"), [
    ({"outcome": "permanent"}, ["inv_b"]),
    ({"documentId": "inv_a"}, ["inv_a"]),
    ({"locationId": "loc_2"}, ["inv_c"]),
    ({"since": "2026-01-05T12:01:00"}, ["inv_c", "inv_b"]),  # datetime-local: no offset, UTC
    ({"until": "2026-01-05T12:01", "locationId": "", "outcome": ""}, ["inv_a"]),
])
def test_the_delivery_log_takes_the_apis_filters_from_its_form(console, store, query,
                                                               expected):
    attempt(store, "inv_a", OK, T0)
    attempt(store, "inv_b", DEAD_404, T0 + dt.timedelta(minutes=1))
    attempt(store, "inv_c", OK, T0 + dt.timedelta(minutes=2), location_id="loc_2")
    resp = console.get("/console/deliveries", query_string=query)
    assert resp.status_code == 200
    assert rows_of(resp.text) == expected


def test_the_delivery_log_pages_keep_their_filters(console, store):
    for i in range(5):
        attempt(store, f"inv_{i}", OK, T0)
    attempt(store, "inv_other", OK, T0, location_id="loc_2")
    seen, url = [], "/console/deliveries?locationId=loc_1&limit=2"
    for _ in range(5):
        page = console.get(url).text
        seen += rows_of(page)
        found = re.search(r'<a href="([^"]+)" rel="next">', page)
        if not found:
            break
        url = found[1].replace("&amp;", "&")
        assert "locationId=loc_1" in url and "limit=2" in url
    assert seen == [f"inv_{i}" for i in reversed(range(5))]


@pytest.mark.parametrize(("query", "field"), [
    ({"since": "yesterday"}, "since"), ({"locationId": "bad id"}, "locationId"),
    ({"limit": "0"}, "limit"), ({"cursor": "abc"}, "cursor"), ({"surprise": "1"}, "surprise"),
])
def test_a_bad_filter_is_a_422_page_naming_the_field(console, query, field):
    resp = console.get("/console/deliveries", query_string=query)
    assert resp.status_code == 422
    # Next to its input, or named above the table when the form has no input for it.
    assert f'id="{field}-error"' in resp.text or f'role="alert">{field}: ' in resp.text
    assert rows_of(resp.text) == []
