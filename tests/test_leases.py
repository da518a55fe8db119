"""Leases follow their holder: renewed while a forwarder works, given up when they cannot be.

Driven by the hand-moved clock: ``forwarder.leases.loop(now)`` is the renewer thread's one
iteration, called where the thread would run (during a send, through ``SlowClient``). The
kill -9 test with real processes is in test_lease_handover.py.
"""

from __future__ import annotations

import datetime as dt
import logging

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY

from service.forward.forwarder import Forwarder
from service.store.db import delivery_log, documents
from service.store.queue import Outcome

from .conftest import make_view
from .fakes import Call, FakeHighLevelClient, InlineExecutor

TOKEN = "pit-0f9e8d7c-secret-token-4b3a"


class SlowClient:
    """A HighLevel whose every answer takes ``seconds`` of the test's clock; ``during`` runs
    meanwhile (what another thread or process does while the PATCH is in flight)."""

    def __init__(self, fake: FakeHighLevelClient, clock, *, seconds: float, during=None):
        self.fake, self.clock, self.seconds, self.during = fake, clock, seconds, during

    def mark_viewed(self, **kwargs):
        self.clock.advance(self.seconds)
        if self.during is not None:
            self.during()
        return self.fake.mark_viewed(**kwargs)


@pytest.fixture
def fake():
    return FakeHighLevelClient()


@pytest.fixture
def make_forwarder(store, vault, fake, clock):
    vault.set_token("loc_1", access_token=TOKEN, now=clock())

    def make(**overrides) -> Forwarder:
        settings = {"executor": InlineExecutor(), "clock": clock, "rand": lambda: 1.0,
                    "concurrency": 2}
        settings.update(overrides)
        return Forwarder(store, vault, settings.pop("client", fake), **settings)

    return make


def record(store, clock, *document_ids: str) -> None:
    store.record_views([make_view(clock(), document_id=d) for d in document_ids], now=clock())


def doc(store, document_id: str) -> dict:
    with store.engine.connect() as conn:
        return dict(conn.execute(sa.select(documents).where(
            documents.c.document_id == document_id)).one()._mapping)


def logged(store) -> list[tuple[str, str]]:
    with store.engine.connect() as conn:
        return [(r.document_id, r.outcome) for r in conn.execute(
            sa.select(delivery_log).order_by(delivery_log.c.id))]


def lease_events(event: str) -> float:
    return REGISTRY.get_sample_value("relay_leases_total", {"event": event}) or 0.0


@pytest.fixture
def updates(store):
    """The UPDATE statements run on the store's engine (a renewal round is one)."""
    seen: list[str] = []

    def count(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("UPDATE DOCUMENTS"):
            seen.append(statement)

    sa.event.listen(store.engine, "after_cursor_execute", count)
    yield seen
    sa.event.remove(store.engine, "after_cursor_execute", count)


def test_the_default_lease_brings_a_dead_forwarders_documents_back_within_20_seconds(store):
    assert dt.timedelta(seconds=3) <= store.lease <= dt.timedelta(seconds=20)


def test_a_renewal_round_extends_every_held_lease_in_one_statement(store, make_forwarder,
                                                                  clock, updates):
    leases = make_forwarder().leases
    record(store, clock, "inv_1", "inv_2", "inv_3")
    claims = store.claim_due(now=clock(), limit=10)
    updates.clear()  # the claim's own
    third = store.lease / 3
    with leases.holding(claims):
        clock.advance(third.total_seconds() - 1)
        assert leases.loop(clock()) is False  # not due yet: nothing written
        assert updates == []
        clock.advance(1)
        assert leases.loop(clock()) is True
        assert len(updates) == 1  # one statement for the three documents
        assert leases.loop(clock()) is False  # the next round is a third of a lease away
        clock.advance(third.total_seconds())
        assert leases.loop(clock()) is True
        renewed_at = clock()
        assert len(updates) == 2

        # Past the claim's own lease: nobody else may take them, and sends may start...
        clock.now = claims[0].locked_until + dt.timedelta(seconds=1)
        assert store.claim_due(now=clock(), limit=10) == []
        assert all(leases.holds(c) for c in claims)
        # ...but none starts within a third of a lease of the renewed lease's end.
        clock.now = renewed_at + store.lease - third
        assert not any(leases.holds(c) for c in claims)
    # The holder died just after that renewal: its documents come due one lease after it.
    assert store.claim_due(now=renewed_at + store.lease - dt.timedelta(seconds=1),
                           limit=10) == []
    taken = store.claim_due(now=renewed_at + store.lease, limit=10)
    assert sorted(c.document_id for c in taken) == ["inv_1", "inv_2", "inv_3"]


def test_a_forwarder_that_cannot_renew_gives_up_the_sends_it_has_not_started(
        store, make_forwarder, fake, clock, monkeypatch, caplog):
    """Store unreachable for renewals: the send in flight finishes; the next one does not
    start within a third of a lease of the lease's end, and is released, not lost."""
    caplog.set_level(logging.INFO, logger="service.forward")
    record(store, clock, "inv_1", "inv_2")

    def unreachable(*args, **kwargs):
        raise sa.exc.OperationalError("UPDATE documents", {}, OSError("connection refused"))

    def renewer_runs():  # the renewer thread's turns while the first PATCH is in flight
        for _ in range(2):
            clock.advance(store.lease.total_seconds() / 3)
            assert forwarder.leases.loop(clock()) is True  # tried, failed

    monkeypatch.setattr(store, "renew_leases", unreachable)
    given_up, failed = lease_events("given_up"), lease_events("renew_failed")
    forwarder = make_forwarder(client=SlowClient(fake, clock, seconds=0, during=renewer_runs))

    assert forwarder.forward_once(now=clock()) == 2

    assert [c.document_id for c in fake.calls] == ["inv_1"]  # inv_2 never started
    assert logged(store) == [("inv_1", "delivered")]
    assert (lease_events("given_up") - given_up, lease_events("renew_failed") - failed) == (1, 2)
    messages = [(r.getMessage(), getattr(r, "document_id", None)) for r in caplog.records]
    assert ("lease.given_up", "inv_2") in messages
    assert [m for m, _ in messages].count("lease.renew_failed") == 1  # once per outage
    released = doc(store, "inv_2")
    assert (released["status"], released["lease_token"], released["attempts"]) == (
        "pending", None, 0)
    monkeypatch.undo()
    assert make_forwarder().forward_once(now=clock()) == 1  # due at once for anyone
    assert fake.calls[-1] == Call("invoice", "inv_2", TOKEN)


def test_a_lease_taken_by_another_forwarder_stops_the_send_and_drops_the_late_outcome(
        store, make_forwarder, fake, clock, caplog):
    """Another forwarder's clock runs ahead: it takes the documents while this one still
    thinks its lease holds. The renewal finds them gone: the unstarted send is given up,
    the outcome of the one in flight is dropped, and the new holder's outcome stands."""
    caplog.set_level(logging.INFO, logger="service.forward")
    record(store, clock, "inv_1", "inv_2")
    taken = []

    def meanwhile():
        if not taken:  # the other forwarder claims once its clock says the lease ended
            ahead = clock() + store.lease + dt.timedelta(seconds=1)
            taken.extend(store.claim_due(now=ahead, limit=10))
            assert forwarder.leases.loop(clock()) is True  # renews nothing: none is ours

    forwarder = make_forwarder(client=SlowClient(fake, clock, seconds=store.lease.total_seconds()
                                                 / 3, during=meanwhile))
    dropped = lease_events("outcome_dropped")

    assert forwarder.forward_once(now=clock()) == 2

    assert [c.document_id for c in fake.calls] == ["inv_1"]  # in flight: the one duplicate
    assert sorted(c.document_id for c in taken) == ["inv_1", "inv_2"]
    reasons = {(r.getMessage(), getattr(r, "document_id", None), getattr(r, "reason", None))
               for r in caplog.records}
    assert ("lease.given_up", "inv_2", "taken") in reasons
    attempt = [r for r in caplog.records if r.getMessage() == "delivery.attempt"]
    assert [(r.document_id, r.lease_kept) for r in attempt] == [("inv_1", False)]
    assert lease_events("outcome_dropped") - dropped == 1
    for name in ("inv_1", "inv_2"):  # still the other forwarder's, unchanged
        row = doc(store, name)
        assert (row["status"], row["lease_token"], row["attempts"]) == (
            "pending", taken[0].lease_token, 0)
    # The new holder's outcomes win.
    delivered = Outcome("delivered", "delivered", http_status=200)
    assert store.record_outcomes([(c, delivered) for c in taken], now=clock()) == [True, True]
    assert {doc(store, n)["status"] for n in ("inv_1", "inv_2")} == {"idle"}


def test_a_renewal_never_extends_a_lease_another_forwarder_holds(store, clock):
    record(store, clock, "inv_1")
    [lost] = store.claim_due(now=clock(), limit=10)
    [taken] = store.claim_due(now=lost.locked_until, limit=10)  # its lease had ended

    assert store.renew_leases([lost.lease_token], now=lost.locked_until) == set()

    assert store.claim_due(now=taken.locked_until - dt.timedelta(seconds=1), limit=10) == []
    assert [c.document_id for c in store.claim_due(now=taken.locked_until, limit=10)] == [
        "inv_1"]  # the new holder's lease was left as it was


def test_a_renewal_extends_its_own_lease_and_leaves_recorded_rows_alone(store, clock):
    record(store, clock, "inv_1", "inv_2")
    first, second = store.claim_due(now=clock(), limit=10)
    delivered = Outcome("delivered", "delivered", http_status=200)
    assert store.record_outcomes([(first, delivered)], now=clock()) == [True]

    clock.advance(5)
    assert store.renew_leases([first.lease_token], now=clock()) == {second.row_id}

    assert doc(store, first.document_id)["locked_until"] is None  # recorded: not leased
    assert store.claim_due(now=clock() + store.lease - dt.timedelta(seconds=1),
                           limit=10) == []
    assert store.renew_leases([], now=clock()) == set()
