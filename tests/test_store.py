"""The store on a real SQLite file, and on PostgreSQL when TEST_DATABASE_URL is set."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
import sqlalchemy as sa

from service.store.db import delivery_log, documents, events
from service.store.engine import current_revision, head_revision
from service.store.queue import Outcome, Store

from .conftest import T0, make_view

DELIVERED = Outcome("delivered", "delivered", http_status=200)


def doc_row(store, document_id="inv_1"):
    with store.engine.connect() as conn:
        return conn.execute(
            sa.select(documents).where(documents.c.document_id == document_id)).one()


def test_schema_is_migrated_to_head(services):
    assert current_revision(services.engine) == head_revision()


def test_views_of_one_document_share_one_pending_row(store):
    accepted = store.record_views([make_view(), make_view(), make_view(document_id="inv_2")],
                                  now=T0)
    assert [a.status for a in accepted] == ["queued"] * 3
    assert len({a.id for a in accepted}) == 3
    assert store.queue_depth() == {"pending": 2}
    assert doc_row(store).views_seq == 2


def test_first_view_is_due_at_once(store):
    store.record_views([make_view()], now=T0)
    claims = store.claim_due(now=T0, limit=10)
    assert [(c.document_id, c.views) for c in claims] == [("inv_1", 1)]


def test_kinds_and_locations_are_separate_documents(store):
    store.record_views([make_view(), make_view(kind="estimate"), make_view(location_id="loc_2")],
                       now=T0)
    assert len(store.claim_due(now=T0, limit=10)) == 3


def test_claim_is_a_lease(store):
    store.record_views([make_view()], now=T0)
    first = store.claim_due(now=T0, limit=10)
    assert store.claim_due(now=T0, limit=10) == []  # leased
    later = T0 + store.lease + dt.timedelta(seconds=1)
    second = store.claim_due(now=later, limit=10)  # the first holder died: lease ended
    assert [c.row_id for c in second] == [first[0].row_id]
    assert second[0].lease_token != first[0].lease_token
    # The first holder's late answer does not overwrite the new holder's state...
    assert store.record_outcomes([(first[0], DELIVERED)], now=later) == [False]
    assert doc_row(store).sent_seq == 0
    # ...while the current holder's does.
    assert store.record_outcomes([(second[0], DELIVERED)], now=later) == [True]
    assert doc_row(store).sent_seq == 1


def test_delivered_document_goes_idle_and_coalesces_the_next_window(store):
    store.record_views([make_view()], now=T0)
    [claim] = store.claim_due(now=T0, limit=10)
    store.record_outcomes([(claim, DELIVERED)], now=T0)
    assert doc_row(store).status == "idle"
    # Views inside the window after a send: one more send, at the end of the window.
    t1 = T0 + dt.timedelta(seconds=10)
    store.record_views([make_view(t1), make_view(t1)], now=t1)
    assert store.claim_due(now=t1, limit=10) == []
    end = T0 + store.window
    [claim2] = store.claim_due(now=end, limit=10)
    assert claim2.views == 2
    # A view after the window has passed is due at once.
    store.record_outcomes([(claim2, DELIVERED)], now=end)
    t3 = end + store.window + dt.timedelta(seconds=1)
    store.record_views([make_view(t3)], now=t3)
    assert len(store.claim_due(now=t3, limit=10)) == 1


def test_views_during_a_send_cause_one_more_send_after_the_window(store):
    store.record_views([make_view()], now=T0)
    [claim] = store.claim_due(now=T0, limit=10)
    store.record_views([make_view()], now=T0)  # arrives while the PATCH is in flight
    store.record_outcomes([(claim, DELIVERED)], now=T0)
    row = doc_row(store)
    assert (row.status, row.sent_seq, row.views_seq) == ("pending", 1, 2)
    assert store.claim_due(now=T0 + dt.timedelta(seconds=59), limit=10) == []
    [again] = store.claim_due(now=T0 + store.window, limit=10)
    assert (again.seq_from, again.seq_to) == (1, 2)


def test_event_status_follows_the_document(store):
    [first] = store.record_views([make_view()], now=T0)
    assert store.event_status(first.id)["status"] == "queued"
    [claim] = store.claim_due(now=T0, limit=10)
    t1 = T0 + dt.timedelta(seconds=1)
    [second] = store.record_views([make_view()], now=t1)  # not covered by the claim
    store.record_outcomes([(claim, DELIVERED)], now=t1)
    status = store.event_status(first.id)
    assert status["status"] == "delivered" and status["deliveredAt"] == t1
    assert store.event_status(second.id)["status"] == "queued"
    assert store.event_status("no-such-id") is None


def test_dead_document_reports_failed_and_a_new_view_reopens_it(store):
    [first] = store.record_views([make_view()], now=T0)
    [claim] = store.claim_due(now=T0, limit=10)
    store.record_outcomes([(claim, Outcome("dead", "permanent", http_status=404,
                                           message="Invoice not found"))], now=T0)
    status = store.event_status(first.id)
    assert (status["status"], status["reason"], status["message"]) == (
        "failed", "permanent", "Invoice not found")
    t1 = T0 + dt.timedelta(seconds=5)
    [second] = store.record_views([make_view(t1)], now=t1)
    assert doc_row(store).status == "pending"
    assert store.claim_due(now=t1, limit=10) == []  # still inside the window
    [claim2] = store.claim_due(now=T0 + store.window, limit=10)
    assert claim2.views == 1
    assert store.event_status(second.id)["status"] == "queued"


def test_retry_spends_an_attempt_unless_told_not_to(store):
    store.record_views([make_view()], now=T0)
    [claim] = store.claim_due(now=T0, limit=10)
    due = T0 + dt.timedelta(seconds=3)
    retry = Outcome("retry", "retry", http_status=503, next_due=due)
    store.record_outcomes([(claim, retry)], now=T0)
    assert doc_row(store).attempts == 1
    assert store.claim_due(now=due - dt.timedelta(seconds=1), limit=10) == []
    [claim] = store.claim_due(now=due, limit=10)
    store.record_outcomes([(claim, Outcome("retry", "rate_limited", http_status=429, next_due=due,
                                           spend_attempt=False))], now=due)
    assert doc_row(store).attempts == 1


def test_every_outcome_writes_one_delivery_log_row(store):
    store.record_views([make_view(request_id="req-1")], now=T0)
    [claim] = store.claim_due(now=T0, limit=10)
    store.record_outcomes([(claim, Outcome("delivered", "delivered", http_status=200,
                                           latency_ms=42, trace_id="t-1"))], now=T0)
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(delivery_log)).all()
    assert len(rows) == 1
    row = rows[0]
    assert (row.outcome, row.http_status, row.latency_ms, row.views_covered, row.attempt,
            row.trace_id, row.request_id) == ("delivered", 200, 42, 1, 1, "t-1", "req-1")


def test_blocked_views_wait_for_a_token(store, vault):
    store.record_views([make_view(), make_view(document_id="inv_2")], now=T0)
    claims = store.claim_due(now=T0, limit=1)
    store.record_outcomes([(claims[0], Outcome("blocked", "no_token"))], now=T0)
    assert store.block_location("loc_1", now=T0) == 1  # the other, unclaimed one
    assert store.queue_depth() == {"blocked": 2}
    assert store.claim_due(now=T0, limit=10) == []
    assert store.unblock(now=T0) == 0  # still no token
    vault.set_token("loc_1", access_token="pit-token-123456", now=T0)
    assert store.unblock(now=T0, location_id="loc_1") == 2
    assert len(store.claim_due(now=T0, limit=10)) == 2


def test_duplicate_event_ids_are_recorded_once(store):
    [a] = store.record_views([make_view(event_key="evt-1")], now=T0)
    [b, c] = store.record_views([make_view(event_key="evt-1"), make_view(event_key="evt-2")],
                                now=T0)
    assert (b.id, b.status) == (a.id, "duplicate")
    assert c.status == "queued"
    [d, e] = store.record_views([make_view(event_key="evt-3"), make_view(event_key="evt-3")],
                                now=T0)
    assert (e.id, e.status) == (d.id, "duplicate")
    assert doc_row(store).views_seq == 3
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(events)).scalar() == 3


def test_a_failing_batch_stores_nothing(store):
    bad = make_view(document_id="x" * 100)  # longer than the column on PostgreSQL
    good = make_view(document_id="inv_ok")
    if store.dialect == "sqlite":
        bad = make_view(viewed_at=None)  # NOT NULL violation on every backend
    with pytest.raises(sa.exc.DBAPIError):
        store.record_views([good, bad], now=T0)
    assert store.queue_depth() == {}


def test_filtered_views_are_recorded_but_never_queued(store):
    [a] = store.record_views([make_view(forward=False, verdict="bot")], now=T0)
    assert a.status == "filtered"
    assert store.event_status(a.id)["status"] == "filtered"
    assert store.queue_depth() == {}
    assert store.location("loc_1", now=T0)["verdicts"] == {"bot": 1}


def test_concurrent_views_of_one_document_are_all_counted(app, store):
    """Eight threads, one document: the upsert never loses a count (row locks / BEGIN IMMEDIATE)."""
    errors = []

    def post(i):
        try:
            store.record_views([make_view(event_key=f"e{i}-{j}") for j in range(5)], now=T0)
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert doc_row(store).views_seq == 40


def test_concurrent_claims_never_share_a_document(db_url, store):
    """Two stores (as two forwarders would) claim at once: disjoint sets, every row once."""
    store.record_views([make_view(document_id=f"inv_{i}") for i in range(60)], now=T0)
    other = Store(sa.create_engine(db_url) if store.dialect == "postgresql"
                  else store.engine, coalesce_window=60)
    got: list[list] = [[], []]

    def claim(idx, s):
        while batch := s.claim_due(now=T0, limit=7):
            got[idx].extend(c.row_id for c in batch)

    threads = [threading.Thread(target=claim, args=(0, store)),
               threading.Thread(target=claim, args=(1, other))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got[0]) + len(got[1]) == 60
    assert set(got[0]).isdisjoint(got[1])
    if other.engine is not store.engine:
        other.engine.dispose()
