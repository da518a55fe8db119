"""The forwarder, one iteration at a time: ``forward_once(now=...)`` with a hand-moved clock."""

from __future__ import annotations

import datetime as dt
import logging

import pytest
import sqlalchemy as sa

from service.forward.forwarder import Forwarder, classify, retry_delay, run
from service.highlevel.client import HighLevelError, RateLimit, Response
from service.store.db import delivery_log, documents
from service.store.queue import Claim, Outcome

from .conftest import T0, make_view
from .fakes import Call, FakeHighLevelClient, InlineExecutor

TOKEN = "pit-0f9e8d7c-secret-token-4b3a"
NEW_TOKEN = "pit-1a2b3c4d-replacement-9z8y"
DAY = 86_400
WINDOW = 60  # COALESCE_WINDOW_SECONDS default
LEASE = 15  # LEASE_SECONDS default


# -- helpers -------------------------------------------------------------------------------


@pytest.fixture
def fake():
    return FakeHighLevelClient()


@pytest.fixture
def make_forwarder(store, vault, fake, clock):
    """Build a Forwarder on the test store with an inline executor and no randomness."""

    def make(**overrides) -> Forwarder:
        settings = {"executor": InlineExecutor(), "clock": clock, "rand": lambda: 1.0}
        settings.update(overrides)
        return Forwarder(store, vault, settings.pop("client", fake), **settings)

    return make


@pytest.fixture
def forwarder(make_forwarder, vault, clock):
    """A forwarder whose location loc_1 has a Private Integration Token."""
    vault.set_token("loc_1", access_token=TOKEN, now=clock())
    return make_forwarder()


def view(store, clock, count: int = 1, **overrides) -> list[str]:
    """Record ``count`` views (of loc_1/inv_1 unless overridden) now; return their event ids."""
    accepted = store.record_views([make_view(clock(), **overrides)] * count, now=clock())
    return [a.id for a in accepted]


def status(store, event_id: str) -> tuple:
    event = store.event_status(event_id)
    return event["status"], event.get("reason")


def log_rows(store) -> list[dict]:
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(delivery_log).order_by(delivery_log.c.id))
        return [dict(row._mapping) for row in rows]


def doc(store, document_id: str = "inv_1") -> dict:
    with store.engine.connect() as conn:
        row = conn.execute(
            sa.select(documents).where(documents.c.document_id == document_id)
        ).one()
        return dict(row._mapping)


def make_claim(**overrides) -> Claim:
    fields = {"row_id": 1, "kind": "invoice", "location_id": "loc_1", "document_id": "inv_1",
              "seq_from": 0, "seq_to": 1, "attempts": 0, "pending_since": T0,
              "lease_token": "x" * 32}
    fields.update(overrides)
    return Claim(**fields)


# -- retry_delay ---------------------------------------------------------------------------


@pytest.mark.parametrize(("attempt", "most"), [
    (0, 2), (1, 4), (2, 8), (3, 16), (4, 32), (8, 512), (9, 600), (10, 600), (500, 600),
])
def test_retry_delay_doubles_up_to_the_cap(attempt, most):
    assert retry_delay(attempt, rand=lambda: 1.0) == most
    assert retry_delay(attempt, rand=lambda: 0.5) == most / 2


@pytest.mark.parametrize("attempt", [0, 3, 40])
def test_retry_delay_full_jitter_reaches_zero(attempt):
    assert retry_delay(attempt, rand=lambda: 0.0) == 0


@pytest.mark.parametrize(("retry_after", "expected"), [
    (7, 7), (0, 0), (599.5, 599.5), (600, 600), (3600, 600), (-5, 0),
])
def test_retry_after_wins_and_is_clamped(retry_after, expected):
    assert retry_delay(9, rand=lambda: 1.0, retry_after=retry_after) == expected
    assert retry_delay(0, rand=lambda: 0.0, retry_after=retry_after) == expected


# -- classify ------------------------------------------------------------------------------

NOW = T0 + dt.timedelta(minutes=5)
MAX_AGE = dt.timedelta(seconds=DAY)


def outcome_of(resp, *, attempts=0, age=300, error=None, rand=lambda: 1.0) -> Outcome:
    claim = make_claim(attempts=attempts, pending_since=NOW - dt.timedelta(seconds=age))
    return classify(resp, claim, now=NOW, max_age=MAX_AGE, error=error, rand=rand)


@pytest.mark.parametrize("status_code", [200, 204])
def test_classify_2xx_is_delivered(status_code):
    outcome = outcome_of(Response(status_code, latency_ms=42))
    assert (outcome.result, outcome.outcome, outcome.http_status) == (
        "delivered", "delivered", status_code)
    assert outcome.latency_ms == 42


@pytest.mark.parametrize(("status_code", "message"), [
    (400, "invoiceId must be a string"),
    (404, "Invoice not found"),
    (422, "Unprocessable Entity"),
])
def test_classify_permanent_statuses_are_dead_with_highlevels_message(status_code, message):
    outcome = outcome_of(Response(status_code, message=message, trace_id="trace-1"))
    assert (outcome.result, outcome.outcome) == ("dead", "permanent")
    assert (outcome.message, outcome.http_status, outcome.trace_id) == (
        message, status_code, "trace-1")


@pytest.mark.parametrize("status_code", [500, 502, 503, 504, 408])
def test_classify_server_errors_retry_after_backoff(status_code):
    outcome = outcome_of(Response(status_code, message="Service Unavailable"), attempts=3)
    assert (outcome.result, outcome.spend_attempt) == ("retry", True)
    assert outcome.next_due == NOW + dt.timedelta(seconds=16)
    assert outcome.message == "Service Unavailable"


def test_classify_server_error_honours_retry_after():
    outcome = outcome_of(Response(503, retry_after=42.0), attempts=3)
    assert outcome.next_due == NOW + dt.timedelta(seconds=42)
    assert outcome.message == "HTTP 503"


@pytest.mark.parametrize(("resp", "wait"), [
    # HighLevel's usual 429: no Retry-After; the interval header says when the window ends.
    (Response(429, message="Too Many Requests",
              rate_limit=RateLimit(max=100, remaining=0, interval_ms=10_000)), 10),
    (Response(429, retry_after=3.0, rate_limit=RateLimit(interval_ms=10_000)), 3),
    (Response(429), 10),  # neither: HighLevel's 10 s window, not a jittered backoff
])
def test_classify_429_waits_without_spending_an_attempt(resp, wait):
    outcome = outcome_of(resp, attempts=4, rand=lambda: 0.5)
    assert (outcome.result, outcome.outcome, outcome.spend_attempt) == (
        "retry", "rate_limited", False)
    assert outcome.next_due == NOW + dt.timedelta(seconds=wait)


def test_classify_transport_error_retries_as_network_error():
    outcome = outcome_of(None, attempts=1, error="timeout: ReadTimeout")
    assert (outcome.result, outcome.outcome, outcome.spend_attempt) == (
        "retry", "network_error", True)
    assert (outcome.http_status, outcome.message) == (None, "timeout: ReadTimeout")
    assert outcome.next_due == NOW + dt.timedelta(seconds=4)


@pytest.mark.parametrize("resp", [
    Response(503), Response(500), Response(429, rate_limit=RateLimit(interval_ms=10_000)), None,
])
@pytest.mark.parametrize(("age", "result"), [(DAY - 1, "retry"), (DAY, "dead"), (DAY * 3, "dead")])
def test_classify_expires_retries_older_than_max_age(resp, age, result):
    outcome = outcome_of(resp, age=age, error="timeout" if resp is None else None)
    assert outcome.result == result
    if result == "dead":
        assert outcome.outcome == "expired"
        assert outcome.message


@pytest.mark.parametrize(("resp", "result", "label"), [
    (Response(200), "delivered", "delivered"),
    (Response(404, message="Invoice not found"), "dead", "permanent"),
])
def test_classify_final_answers_stand_even_when_old(resp, result, label):
    outcome = outcome_of(resp, age=DAY * 2)
    assert (outcome.result, outcome.outcome) == (result, label)


# -- coalescing ----------------------------------------------------------------------------


def test_first_view_is_sent_at_once(store, forwarder, fake, clock):
    [event] = view(store, clock)

    assert forwarder.forward_once(now=clock()) == 1

    assert fake.calls == [Call("invoice", "inv_1", TOKEN)]
    assert status(store, event) == ("delivered", None)
    assert store.event_status(event)["deliveredAt"] == T0
    assert store.queue_depth() == {"idle": 1}


def test_one_send_per_document_and_kind(store, forwarder, fake, clock):
    view(store, clock, document_id="inv_1")
    view(store, clock, document_id="inv_2", count=2)
    view(store, clock, document_id="inv_1", kind="estimate")

    assert forwarder.forward_once(now=clock()) == 3

    assert sorted(fake.calls, key=lambda c: (c.kind, c.document_id)) == [
        Call("estimate", "inv_1", TOKEN), Call("invoice", "inv_1", TOKEN),
        Call("invoice", "inv_2", TOKEN)]
    assert sorted(row["views_covered"] for row in log_rows(store)) == [1, 1, 2]


def test_views_waiting_together_share_one_patch(store, forwarder, fake, clock):
    events = view(store, clock) + view(store, clock) + view(store, clock)

    forwarder.forward_once(now=clock())

    assert len(fake.calls) == 1
    [row] = log_rows(store)
    assert (row["outcome"], row["http_status"], row["views_covered"]) == ("delivered", 200, 3)
    assert [status(store, e) for e in events] == [("delivered", None)] * 3


def test_views_after_a_send_wait_for_the_window_then_one_more_send(store, forwarder, fake,
                                                                     clock):
    [first] = view(store, clock)
    forwarder.forward_once(now=clock())
    clock.advance(10)
    later = view(store, clock) + view(store, clock, count=2)

    for at in (10, 30, WINDOW - 0.001):
        clock.now = T0 + dt.timedelta(seconds=at)
        assert forwarder.forward_once(now=clock()) == 0
    assert len(fake.calls) == 1
    assert [status(store, e) for e in later] == [("queued", None)] * 3

    clock.now = T0 + dt.timedelta(seconds=WINDOW)
    assert forwarder.forward_once(now=clock()) == 1
    assert len(fake.calls) == 2
    assert [row["views_covered"] for row in log_rows(store)] == [1, 3]
    assert [status(store, e) for e in [first, *later]] == [("delivered", None)] * 4

    clock.advance(WINDOW * 5)
    assert forwarder.forward_once(now=clock()) == 0
    assert len(fake.calls) == 2
    assert store.queue_depth() == {"idle": 1}


def test_a_view_during_a_send_gets_one_more_send_after_the_window(store, forwarder, fake,
                                                                    clock):
    [first] = view(store, clock)
    [claim] = store.claim_due(now=clock(), limit=10)
    clock.advance(1)
    [during] = view(store, clock)  # arrives while the PATCH is in flight
    delivered = Outcome("delivered", "delivered", http_status=200)
    assert store.record_outcomes([(claim, delivered)], now=clock()) == [True]

    assert status(store, first) == ("delivered", None)
    assert status(store, during) == ("queued", None)
    assert forwarder.forward_once(now=clock()) == 0
    clock.advance(WINDOW - 1)
    assert forwarder.forward_once(now=clock()) == 0  # the window runs from the send's end

    clock.advance(1)
    assert forwarder.forward_once(now=clock()) == 1
    assert fake.calls == [Call("invoice", "inv_1", TOKEN)]
    assert status(store, during) == ("delivered", None)
    assert log_rows(store)[-1]["views_covered"] == 1


# -- retries -------------------------------------------------------------------------------


def test_429_does_not_spend_an_attempt_and_is_retried_when_the_window_ends(store, forwarder,
                                                                             fake, clock):
    [event] = view(store, clock)
    fake.script(Response(429, message="Too Many Requests",
                         rate_limit=RateLimit(max=100, remaining=0, interval_ms=10_000)))

    forwarder.forward_once(now=clock())

    row = doc(store)
    assert (row["status"], row["attempts"]) == ("pending", 0)
    assert row["due_at"] == T0 + dt.timedelta(seconds=10)
    assert status(store, event) == ("queued", None)
    clock.advance(9.9)
    assert forwarder.forward_once(now=clock()) == 0
    clock.advance(0.1)
    assert forwarder.forward_once(now=clock()) == 1
    assert len(fake.calls) == 2
    assert status(store, event) == ("delivered", None)
    assert [(r["outcome"], r["http_status"], r["attempt"]) for r in log_rows(store)] == [
        ("rate_limited", 429, 1), ("delivered", 200, 1)]


def test_503_then_200_delivers_on_the_retry_after_the_backoff(store, forwarder, fake, clock):
    [event] = view(store, clock)
    fake.script(503)

    forwarder.forward_once(now=clock())
    assert doc(store)["attempts"] == 1
    clock.advance(1.9)
    assert forwarder.forward_once(now=clock()) == 0
    clock.advance(0.1)  # rand=1.0: the full 2 s of attempt 0
    assert forwarder.forward_once(now=clock()) == 1

    assert len(fake.calls) == 2
    assert status(store, event) == ("delivered", None)
    assert doc(store)["attempts"] == 0
    assert [(r["outcome"], r["attempt"]) for r in log_rows(store)] == [
        ("retry", 1), ("delivered", 2)]


def test_timeouts_and_connection_errors_are_retried(store, forwarder, fake, clock):
    [event] = view(store, clock)
    fake.script(HighLevelError("timeout: ReadTimeout"),
                HighLevelError("ConnectionError: connection refused"))

    forwarder.forward_once(now=clock())
    clock.advance(2)
    forwarder.forward_once(now=clock())
    assert status(store, event) == ("queued", None)
    assert doc(store)["due_at"] == clock() + dt.timedelta(seconds=4)
    clock.advance(4)
    forwarder.forward_once(now=clock())

    assert len(fake.calls) == 3
    assert status(store, event) == ("delivered", None)
    assert [(r["outcome"], r["http_status"], r["message"]) for r in log_rows(store)] == [
        ("network_error", None, "timeout: ReadTimeout"),
        ("network_error", None, "ConnectionError: connection refused"),
        ("delivered", 200, None)]


def test_404_is_permanent_and_never_resent(store, forwarder, fake, clock):
    [event] = view(store, clock)
    fake.script(Response(404, message="Invoice not found", trace_id="abc"))

    forwarder.forward_once(now=clock())
    clock.advance(DAY)
    assert forwarder.forward_once(now=clock()) == 0

    assert len(fake.calls) == 1
    assert store.event_status(event).items() >= {
        "status": "failed", "reason": "permanent", "message": "Invoice not found"}.items()
    assert store.queue_depth() == {"dead": 1}
    assert log_rows(store)[0]["trace_id"] == "abc"


def test_only_one_document_fails_when_one_is_not_found(store, forwarder, fake, clock):
    [gone] = view(store, clock, document_id="inv_gone")
    [ok] = view(store, clock, document_id="inv_ok")
    fake.script(Response(404, message="Invoice not found"), document_id="inv_gone")

    forwarder.forward_once(now=clock())

    assert status(store, gone) == ("failed", "permanent")
    assert status(store, ok) == ("delivered", None)


def test_503s_until_max_event_age_end_dead_expired(store, forwarder, fake, clock):
    [event] = view(store, clock)
    fake.script(*[503] * 5)

    forwarder.forward_once(now=clock())
    clock.advance(DAY - 1)
    forwarder.forward_once(now=clock())  # a second short of the limit: still retried
    assert status(store, event) == ("queued", None)
    clock.advance(4)
    forwarder.forward_once(now=clock())
    clock.advance(DAY)
    assert forwarder.forward_once(now=clock()) == 0

    assert len(fake.calls) == 3
    assert status(store, event) == ("failed", "expired")
    assert store.queue_depth() == {"dead": 1}
    assert [r["outcome"] for r in log_rows(store)] == ["retry", "retry", "expired"]


# -- tokens --------------------------------------------------------------------------------


def test_views_without_a_token_are_parked_then_sent_with_the_stored_token(store, forwarder,
                                                                          vault, fake, clock):
    events = view(store, clock, location_id="loc_new", count=2)

    forwarder.forward_once(now=clock())
    assert fake.calls == []
    assert [status(store, e) for e in events] == [("queued", "blocked")] * 2
    assert store.queue_depth() == {"blocked": 1}
    clock.advance(DAY)
    assert forwarder.forward_once(now=clock()) == 0  # parked, not retried, never expired

    vault.set_token("loc_new", access_token=NEW_TOKEN, now=clock())
    assert store.unblock(now=clock(), location_id="loc_new") == 1
    forwarder.forward_once(now=clock())

    assert fake.calls == [Call("invoice", "inv_1", NEW_TOKEN)]
    assert [status(store, e) for e in events] == [("delivered", None)] * 2


def test_the_periodic_sweep_releases_parked_views_of_a_new_token(store, forwarder, vault, fake,
                                                                 clock):
    [parked] = view(store, clock, location_id="loc_new")
    [other] = view(store, clock, location_id="loc_never")
    forwarder.forward_once(now=clock())
    vault.set_token("loc_new", access_token=NEW_TOKEN, now=clock())

    clock.advance(4.9)
    assert forwarder.forward_once(now=clock()) == 0
    clock.advance(0.1)
    assert forwarder.forward_once(now=clock()) == 1

    assert fake.calls == [Call("invoice", "inv_1", NEW_TOKEN)]
    assert status(store, parked) == ("delivered", None)
    assert status(store, other) == ("queued", "blocked")


def test_one_401_is_retried_with_the_token_still_active(store, forwarder, vault, fake, clock):
    [event] = view(store, clock)
    fake.script(Response(401, message="Invalid token: access token is invalid"))

    forwarder.forward_once(now=clock())
    assert vault.describe("loc_1")["status"] == "active"
    assert status(store, event) == ("queued", None)
    clock.advance(2)
    forwarder.forward_once(now=clock())

    assert status(store, event) == ("delivered", None)
    assert [r["outcome"] for r in log_rows(store)] == ["unauthorized", "delivered"]
    # The success reset the count: a later single 401 is again only a retry.
    clock.advance(WINDOW)
    view(store, clock)
    fake.script(401)
    forwarder.forward_once(now=clock())
    assert vault.describe("loc_1")["status"] == "active"
    assert doc(store)["status"] == "pending"


def test_two_401s_in_a_row_invalidate_the_token_and_park_views_until_a_new_one(
        store, forwarder, vault, fake, clock):
    [first] = view(store, clock, document_id="inv_1")
    fake.script(401, 401)
    forwarder.forward_once(now=clock())
    clock.advance(1)
    [second] = view(store, clock, document_id="inv_2")
    clock.advance(1)

    forwarder.forward_once(now=clock())

    assert len(fake.calls) == 2  # the second claim was parked without a send
    summary = vault.describe("loc_1")
    assert summary["status"] == "invalid"
    assert summary["lastError"] == "HTTP 401"
    assert store.queue_depth() == {"blocked": 2}
    assert [status(store, e) for e in (first, second)] == [("queued", "blocked")] * 2
    clock.advance(DAY * 2)
    assert forwarder.forward_once(now=clock()) == 0  # parked rows neither sent nor expired

    vault.set_token("loc_1", access_token=NEW_TOKEN, now=clock())
    clock.advance(5)  # the forwarder's unblock sweep
    assert forwarder.forward_once(now=clock()) == 2

    assert {c.token for c in fake.calls[2:]} == {NEW_TOKEN}
    assert [status(store, e) for e in (first, second)] == [("delivered", None)] * 2


def test_a_401_for_an_old_token_never_invalidates_its_replacement(store, make_forwarder, vault,
                                                                  clock):
    vault.set_token("loc_1", access_token=TOKEN, now=clock())

    class RotatedDuringSend(FakeHighLevelClient):
        """The operator stores a new token while a send with the old one is in flight."""

        def mark_viewed(self, **kwargs):
            if len(self.calls) == 1:
                vault.set_token("loc_1", access_token=NEW_TOKEN, now=clock())
            return super().mark_viewed(**kwargs)

    fake = RotatedDuringSend()
    fake.script(401, 401, 401)
    forwarder = make_forwarder(client=fake)
    [event] = view(store, clock)
    forwarder.forward_once(now=clock())  # old token: first 401
    clock.advance(2)
    forwarder.forward_once(now=clock())  # old token's second 401 lands after the rotation
    assert vault.describe("loc_1")["status"] == "active"
    clock.advance(4)
    forwarder.forward_once(now=clock())  # the new token's own first 401: only a retry

    assert vault.describe("loc_1")["status"] == "active"
    assert doc(store)["status"] == "pending"
    clock.advance(8)
    forwarder.forward_once(now=clock())
    assert [c.token for c in fake.calls] == [TOKEN, TOKEN, NEW_TOKEN, NEW_TOKEN]
    assert status(store, event) == ("delivered", None)


def test_403_invalidates_the_token_at_once(store, forwarder, vault, fake, clock):
    events = view(store, clock, document_id="inv_1") + view(store, clock, document_id="inv_2")
    fake.script(Response(403, message="The token does not have access to this location."))

    forwarder.forward_once(now=clock())

    assert len(fake.calls) == 1
    summary = vault.describe("loc_1")
    assert summary["status"] == "invalid"
    assert summary["lastError"] == "The token does not have access to this location."
    assert [status(store, e) for e in events] == [("queued", "blocked")] * 2


def test_a_token_no_key_decrypts_is_marked_invalid_and_parks_the_locations_views(
        store, make_forwarder, vault, fake, clock):
    """Retrying cannot help until an operator restores the key or stores a new token."""
    from cryptography.fernet import Fernet

    from service.store.tokens import TokenVault

    removed_key = Fernet.generate_key().decode()  # no longer in TOKEN_ENCRYPTION_KEYS
    TokenVault(store.engine, [removed_key]).set_token("loc_1", access_token=TOKEN, now=clock())
    events = view(store, clock, document_id="inv_1") + view(store, clock, document_id="inv_2")
    forwarder = make_forwarder(concurrency=1)  # inv_2 is still pending when inv_1 finds out

    assert forwarder.forward_once(now=clock()) == 1
    assert fake.calls == []
    summary = vault.describe("loc_1")
    assert summary["status"] == "invalid"
    assert "TOKEN_ENCRYPTION_KEYS" in summary["lastError"]
    assert store.queue_depth() == {"blocked": 2}  # the unclaimed view parked too
    assert [r["outcome"] for r in log_rows(store)] == ["token_unreadable"]
    assert [status(store, e) for e in events] == [("queued", "blocked")] * 2

    vault.set_token("loc_1", access_token=NEW_TOKEN, now=clock())
    clock.advance(5)  # the forwarder's unblock sweep
    assert forwarder.forward_once(now=clock()) == forwarder.forward_once(now=clock()) == 1
    assert sorted(fake.calls, key=lambda c: c.document_id) == [
        Call("invoice", "inv_1", NEW_TOKEN),
        Call("invoice", "inv_2", NEW_TOKEN)]
    assert [status(store, e) for e in events] == [("delivered", None)] * 2


# -- leases and shutdown -------------------------------------------------------------------


def test_an_expired_lease_is_claimed_again_and_the_late_outcome_is_ignored(
        store, forwarder, fake, clock):
    [event] = view(store, clock)
    [lost] = store.claim_due(now=clock(), limit=10)  # a forwarder that stalls mid-send

    clock.advance(LEASE - 1)
    assert forwarder.forward_once(now=clock()) == 0
    clock.advance(1)
    [taken] = store.claim_due(now=clock(), limit=10)
    assert taken.lease_token != lost.lease_token

    late = Outcome("dead", "permanent", http_status=404, message="Invoice not found")
    assert store.record_outcomes([(lost, late)], now=clock()) == [False]
    delivered = Outcome("delivered", "delivered", http_status=200)
    assert store.record_outcomes([(taken, delivered)], now=clock()) == [True]
    assert store.record_outcomes([(lost, late)], now=clock()) == [False]

    assert status(store, event) == ("delivered", None)
    assert store.queue_depth() == {"idle": 1}
    assert doc(store)["dead_reason"] is None


def test_a_stalled_forwarders_rows_are_sent_by_another_after_the_lease(store, forwarder, fake,
                                                                       clock):
    [event] = view(store, clock)
    store.claim_due(now=clock(), limit=10)  # claimed, then the process died

    clock.advance(LEASE)
    assert forwarder.forward_once(now=clock()) == 1

    assert fake.calls == [Call("invoice", "inv_1", TOKEN)]
    assert status(store, event) == ("delivered", None)


def test_a_stopped_forwarder_releases_its_claims_instead_of_sending(store, forwarder,
                                                                    make_forwarder, fake,
                                                                    clock):
    events = view(store, clock, document_id="inv_1") + view(store, clock, document_id="inv_2")
    forwarder.stop.set()

    forwarder.forward_once(now=clock())

    assert fake.calls == []
    assert log_rows(store) == []
    assert doc(store, "inv_1")["locked_until"] is None
    assert doc(store, "inv_2")["attempts"] == 0
    assert make_forwarder().forward_once(now=clock()) == 2  # due at once for the next one
    assert [status(store, e) for e in events] == [("delivered", None)] * 2


# -- logging -------------------------------------------------------------------------------


def test_each_attempt_logs_one_line_and_never_the_token(store, forwarder, vault, fake, clock,
                                                        caplog):
    caplog.set_level(logging.INFO, logger="service.forward.forwarder")
    view(store, clock, count=2, request_id="req-42")
    fake.script(503, HighLevelError("timeout: ReadTimeout"), Response(401, message="Invalid"),
                Response(200, latency_ms=87))

    for step in (0, 2, 4, 8):
        clock.advance(step)
        forwarder.forward_once(now=clock())
    view(store, clock, document_id="inv_2")
    fake.script(401, 401)
    forwarder.forward_once(now=clock())  # the success reset the count: one 401 is a retry
    clock.advance(2)
    forwarder.forward_once(now=clock())  # the second 401 in a row: token.invalid
    view(store, clock, document_id="inv_3")
    forwarder.forward_once(now=clock())  # parked: no token

    attempts = [r for r in caplog.records if r.getMessage() == "delivery.attempt"]
    assert len(attempts) == len(log_rows(store)) == 7
    first, last_sent = attempts[0], attempts[3]
    assert {k: getattr(first, k) for k in (
        "location_id", "kind", "document_id", "outcome", "http_status", "attempt", "views",
        "request_id")} == {
        "location_id": "loc_1", "kind": "invoice", "document_id": "inv_1", "outcome": "retry",
        "http_status": 503, "attempt": 1, "views": 2, "request_id": "req-42"}
    assert hasattr(first, "latency_ms")
    assert (last_sent.outcome, last_sent.attempt, last_sent.latency_ms) == ("delivered", 4, 87)
    assert [r.outcome for r in attempts] == [
        "retry", "network_error", "unauthorized", "delivered", "unauthorized", "token_invalid",
        "no_token"]
    assert any(r.getMessage() == "token.invalid" for r in caplog.records)
    assert TOKEN not in caplog.text
    for record in caplog.records:
        assert TOKEN not in repr(record.__dict__)
        assert TOKEN not in record.getMessage()


# -- run -----------------------------------------------------------------------------------


def test_run_once_returns_what_it_handled_and_stops_when_nothing_is_due(store, make_forwarder,
                                                                        vault, fake, clock):
    vault.set_token("loc_1", access_token=TOKEN, now=clock())
    for document_id in ("inv_1", "inv_2", "inv_3"):
        view(store, clock, document_id=document_id)
    fake.script(503, document_id="inv_3")  # comes due again in 2 s: not this run's business

    assert run(make_forwarder(concurrency=2), once=True) == 3

    assert len(fake.calls) == 3
    assert store.queue_depth() == {"idle": 2, "pending": 1}
    assert run(make_forwarder(), once=True) == 0
    clock.advance(2)
    assert run(make_forwarder(), once=True) == 1
    assert len(fake.calls) == 4


def test_run_honours_max_batches_and_a_stop_already_set(store, make_forwarder, vault, fake,
                                                         clock):
    vault.set_token("loc_1", access_token=TOKEN, now=clock())
    for document_id in ("inv_1", "inv_2", "inv_3"):
        view(store, clock, document_id=document_id)

    stopped = make_forwarder()
    stopped.stop.set()
    assert run(stopped) == 0
    assert run(make_forwarder(concurrency=2), max_batches=1) == 2
    assert len(fake.calls) == 2
