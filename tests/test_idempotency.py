"""Idempotency keys are per location: one tenant's eventId never answers for another's."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from service.store.db import documents, events
from service.store.engine import create_engine, upgrade

from .conftest import ingest_headers, make_event


def post(client, body):
    return client.post("/v1/events", json=body, headers=ingest_headers())


def stored(services) -> list:
    with services.engine.connect() as conn:
        return conn.execute(sa.select(events.c.location_id, events.c.event_key,
                                      events.c.document_id).order_by(events.c.location_id)
                            ).all()


def test_the_same_event_id_for_two_locations_is_two_events(client, services):
    a = post(client, make_event(locationId="TENANT_A", invoiceId="INV_A", eventId="evt-1"))
    b = post(client, make_event(locationId="TENANT_B", invoiceId="INV_B", eventId="evt-1"))
    assert (a.status_code, a.json["status"]) == (202, "queued")
    assert (b.status_code, b.json["status"]) == (202, "queued")
    assert a.json["id"] != b.json["id"]
    assert stored(services) == [("TENANT_A", "evt-1", "INV_A"), ("TENANT_B", "evt-1", "INV_B")]
    seen = client.get(f"/v1/events/{b.json['id']}", headers=ingest_headers()).json
    assert (seen["locationId"], seen["documentId"]) == ("TENANT_B", "INV_B")
    assert services.store.queue_depth() == {"pending": 2}


def test_a_repeat_for_the_same_location_and_document_is_a_duplicate(client, services):
    first = post(client, make_event(locationId="L1", invoiceId="INV", eventId="k"))
    again = post(client, make_event(locationId="L1", invoiceId="INV", eventId="k"))
    assert (again.status_code, again.json) == (202, {"id": first.json["id"],
                                                     "status": "duplicate"})
    assert len(stored(services)) == 1


@pytest.mark.parametrize("other", [{"invoiceId": "INV_2"},
                                   {"invoiceId": None, "estimateId": "INV"}])
def test_the_same_key_for_another_document_of_the_location_is_409(client, services, other):
    post(client, make_event(locationId="L1", invoiceId="INV", eventId="k"))
    resp = post(client, make_event(locationId="L1", eventId="k", **other))
    assert resp.status_code == 409
    assert resp.json["statusCode"] == 409
    assert "already used for another document" in resp.json["message"]
    assert "'k'" in resp.json["message"] and "'L1'" in resp.json["message"]
    assert stored(services) == [("L1", "k", "INV")]


def test_a_batch_reusing_a_key_for_two_documents_is_refused_whole(client, services):
    batch = {"events": [make_event(locationId="L1", invoiceId="OTHER"),
                        make_event(locationId="L1", invoiceId="A", eventId="k"),
                        make_event(locationId="L1", invoiceId="B", eventId="k")]}
    resp = post(client, batch)
    assert resp.status_code == 409
    assert stored(services) == []
    assert services.store.queue_depth() == {}


def test_a_batch_may_repeat_a_key_for_the_same_document(client, services):
    batch = {"events": [make_event(locationId="L1", eventId="k"),
                        make_event(locationId="L1", eventId="k"),
                        make_event(locationId="L2", eventId="k")]}
    answers = post(client, batch).json["events"]
    assert [a["status"] for a in answers] == ["queued", "duplicate", "queued"]
    assert answers[1]["id"] == answers[0]["id"] != answers[2]["id"]


def test_concurrent_requests_with_one_key_store_one_event(app, services):
    """Racing requests (group commit shares transactions among them) store the key once;
    every other answer is a duplicate naming that one event, and the 409s are only for
    the other document."""
    barrier = threading.Barrier(12)
    answers: list = []

    def send(i):
        client = app.test_client()
        barrier.wait()
        body = make_event(locationId="L1", invoiceId="INV" if i % 3 else "OTHER",
                          eventId="race")
        resp = post(client, body)
        answers.append((body["invoiceId"], resp.status_code, resp.json))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    [(location, key, document)] = stored(services)
    assert (location, key) == ("L1", "race")
    winner = [a for a in answers if a[1] == 202 and a[2]["status"] == "queued"]
    assert len(winner) == 1 and winner[0][0] == document
    for invoice, status, body in answers:
        if invoice == document:
            assert status == 202 and body["id"] == winner[0][2]["id"]
        else:
            assert status == 409


def test_migration_keeps_rows_and_opens_the_namespace_per_location(db_url):
    """A store at 0006 (one global namespace) keeps its events through 0007."""
    engine = create_engine(db_url)
    upgrade(engine, "0006")
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO documents (id, kind, location_id, document_id, status, views_seq, "
            "due_at, updated_at) VALUES (1, 'invoice', 'L1', 'INV', 'pending', 1, "
            ":t, :t)"), {"t": "2026-01-01 00:00:00"})
        conn.execute(sa.text(
            "INSERT INTO events (id, event_key, document_row, seq, kind, location_id, "
            "document_id, viewed_at, received_at, verdict, forward) VALUES ('e1', 'k', 1, 1, "
            "'invoice', 'L1', 'INV', :t, :t, 'human', :f)"),
            {"t": "2026-01-01 00:00:00", "f": True})
    upgrade(engine)
    with engine.begin() as conn:
        row = conn.execute(sa.select(events.c.id, events.c.event_key, events.c.views)).one()
        assert tuple(row) == ("e1", "k", 1)
        assert conn.execute(sa.select(sa.func.count()).select_from(documents)).scalar() == 1
        # Another location may now use the same key; the same location may not.
        conn.execute(events.insert().values(
            id="e2", event_key="k", kind="invoice", location_id="L2", document_id="INV",
            viewed_at=sa.func.now(), received_at=sa.func.now()))
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(events.insert().values(
            id="e3", event_key="k", kind="invoice", location_id="L1", document_id="X",
            viewed_at=sa.func.now(), received_at=sa.func.now()))
    engine.dispose()
