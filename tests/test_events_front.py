"""The ingest front door (service/web/events_front.py): one valid event posted is answered
in front of Flask, every other request by Flask as before. Through HTTP only: what a
caller sees must not tell the two apart."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from service import create_app
from service.store.db import events

from .conftest import admin_headers, ingest_headers, make_event, test_config

FULL = {"viewedAt": "2026-01-05T11:59:00Z", "eventId": "ev-1", "source": "billing",
        "userAgent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0", "ip": "203.0.113.9"}


def stored_events(services) -> int:
    with services.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(events)).scalar_one()


def status_of(client, event_id: str) -> dict:
    resp = client.get(f"/v1/events/{event_id}", headers=ingest_headers())
    assert resp.status_code == 200, resp.json
    return resp.json


def test_one_event_is_stored_and_answered_as_a_batch_of_one_is(client, services):
    one = client.post("/v1/events", json=make_event(**FULL), headers=ingest_headers())
    batch = client.post("/v1/events", json={"events": [make_event(
        **{**FULL, "eventId": "ev-2", "invoiceId": "inv_2"})]}, headers=ingest_headers())
    assert one.status_code == batch.status_code == 202
    assert set(one.json) == {"id", "status"} and one.json["status"] == "queued"
    assert batch.json["events"][0]["status"] == "queued"
    # The same headers as Flask's answer, and the same JSON text (compact, one line).
    assert sorted(one.headers.keys()) == sorted(batch.headers.keys())
    assert one.headers["Content-Type"] == batch.headers["Content-Type"] == "application/json"
    assert one.data == (json.dumps(one.json, separators=(",", ":"), sort_keys=True)
                        + "\n").encode()
    first, second = status_of(client, one.json["id"]), status_of(client, batch.json[
        "events"][0]["id"])
    for status in (first, second):
        status.pop("id")
    assert first.pop("documentId") == "inv_1" and second.pop("documentId") == "inv_2"
    assert first.pop("eventId") == "ev-1" and second.pop("eventId") == "ev-2"
    assert first == second  # every other field stored alike: time, source, verdict...
    assert first["viewedAt"] == "2026-01-05T11:59:00+00:00" and first["source"] == "billing"
    assert stored_events(services) == 2


def test_a_single_events_request_id_is_echoed_and_stored(client, services):
    resp = client.post("/v1/events", json=make_event(),
                       headers=ingest_headers(**{"X-Request-ID": "a\tb"}))  # hostile
    assert resp.status_code == 202
    request_id = resp.headers["X-Request-ID"]
    assert request_id != "a\tb" and len(request_id) == 32
    [claim] = services.store.claim_due(now=services.clock(), limit=1)
    assert claim.request_id == request_id


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8",
                                          "application/vnd.relay+json"])
def test_json_content_types_flask_takes_are_taken(client, services, content_type):
    resp = client.post("/v1/events", data=json.dumps(make_event()),
                       headers=ingest_headers(**{"Content-Type": content_type}))
    assert resp.status_code == 202, resp.json
    assert stored_events(services) == 1


@pytest.mark.parametrize(("body", "status"), [
    (b'{"locationId": "loc_1", "invoiceId": ', 400),  # not JSON
    (b'{"locationId": "loc_1"}', 422),  # no document
    (b'{"locationId": "loc_1", "invoiceId": "inv_1", "extra": 1}', 422),
    (b'[{"locationId": "loc_1", "invoiceId": "inv_1"}]', 422),  # not an object
    (b"", 422),
])
def test_what_the_front_door_refuses_flask_answers_in_its_shape(client, services, body,
                                                                status):
    resp = client.post("/v1/events", data=body,
                       headers=ingest_headers(**{"Content-Type": "application/json"}))
    assert resp.status_code == status, resp.json
    assert resp.json["statusCode"] == status and resp.json["message"]
    assert stored_events(services) == 0


def test_a_location_limited_key_posts_its_own_locations_only(client, services):
    made = client.post("/v1/keys", json={"name": "k", "scopes": ["events:write"],
                                         "locations": ["loc_a"]}, headers=admin_headers())
    headers = {"Authorization": f"Bearer {made.json['key']}"}
    assert client.post("/v1/events", json=make_event(locationId="loc_a"),
                       headers=headers).status_code == 202
    refused = client.post("/v1/events", json=make_event(locationId="loc_b"), headers=headers)
    assert refused.status_code == 403 and "loc_b" in refused.json["message"]
    read_only = client.post("/v1/keys", json={"name": "r", "scopes": ["read"]},
                            headers=admin_headers()).json["key"]
    assert client.post("/v1/events", json=make_event(), headers={
        "Authorization": f"Bearer {read_only}"}).status_code == 403
    assert client.post("/v1/events", json=make_event(), headers={
        "Authorization": "Bearer nope"}).status_code == 401
    assert stored_events(services) == 1


def test_a_body_over_the_limit_is_413_and_stores_nothing(migrated_db_url, clock):
    app = create_app(test_config(migrated_db_url, MAX_CONTENT_LENGTH=200))
    services = app.extensions["service"]
    services.clock = clock
    try:
        resp = app.test_client().post(
            "/v1/events", json=make_event(userAgent="x" * 300), headers=ingest_headers())
        assert resp.status_code == 413 and resp.json["statusCode"] == 413
        assert stored_events(services) == 0
    finally:
        services.engine.dispose()


def test_a_conflicting_event_id_is_409_and_stores_nothing(client, services):
    assert client.post("/v1/events", json=make_event(eventId="e"),
                       headers=ingest_headers()).status_code == 202
    resp = client.post("/v1/events", json=make_event(eventId="e", invoiceId="inv_9"),
                       headers=ingest_headers())
    assert resp.status_code == 409 and resp.json["errors"] == {
        "eventId": ["Already used for another document."]}
    assert stored_events(services) == 1
