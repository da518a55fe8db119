"""Rate limits: the pure window arithmetic as tables, and the store-backed limiter."""

from __future__ import annotations

import datetime as dt

import pytest

from service.highlevel.client import RateLimit
from service.store.budget import answered
from service.store.queue import Outcome
from service.store.ratelimit import LimitState, StoreLimiter, learn, reserve
from service.store.retention import purge_location

from .conftest import T0
from .test_forwarder import make_claim

S = dt.timedelta(seconds=1)


def state(**overrides) -> LimitState:
    fields = {"resource": "loc_1", "burst_max": 100, "interval": 10 * S, "daily_max": 200_000}
    fields.update(overrides)
    return LimitState(**fields)


def test_reserve_grants_up_to_the_burst_then_pauses_until_answers_age_out():
    st = state()
    assert reserve(st, 60, T0, token="a") == 60
    assert reserve(st, 60, T0 + S, token="b") == 40
    assert (st.paused_until, st.pause_reason) == (T0 + 30 * S + 10 * S, "burst")  # in flight
    answered(st, "a", 60, T0 + 2 * S)  # the first 60 answered at T0+2: counted until T0+12
    answered(st, "b", 40, T0 + 3 * S)
    assert (st.paused_until, st.pause_reason) == (T0 + 12 * S, "burst")
    assert reserve(st, 1, T0 + 11.9 * S, token="c") == 0
    assert reserve(st, 70, T0 + 12 * S, token="c") == 60  # the 40 of T0+3 still count
    assert reserve(st, 5, T0 + 12.9 * S, token="d") == 0  # 60 in flight + those 40
    answered(st, "c", 60, T0 + 13 * S)
    assert reserve(st, 50, T0 + 13 * S, token="e") == 40  # the 40 of T0+3 aged out


def test_an_unanswered_send_counts_for_its_hold_then_one_interval():
    st = state(burst_max=2)
    assert reserve(st, 2, T0, token="a", hold=30 * S) == 2
    assert reserve(st, 1, T0 + 39 * S, token="b") == 0
    assert reserve(st, 1, T0 + 40 * S, token="b") == 2 - 1


def test_daily_budget_pauses_until_the_next_day():
    st = state(daily_max=150)
    assert reserve(st, 100, T0, token="a") == 100
    answered(st, "a", 100, T0)
    assert reserve(st, 100, T0 + 11 * S, token="b") == 50
    assert st.pause_reason == "daily"
    assert st.paused_until == dt.datetime(2026, 1, 6, tzinfo=dt.UTC)
    assert reserve(st, 10, T0 + dt.timedelta(hours=11), token="c") == 0
    assert reserve(st, 10, dt.datetime(2026, 1, 6, 0, 0, 1, tzinfo=dt.UTC), token="c") == 10


@pytest.mark.parametrize(("rate", "status", "expect"), [
    # headers lower the limit: followed at once
    (RateLimit(max=25, remaining=20, interval_ms=10_000), 200,
     {"burst_max": 25, "used": 5, "paused_until": None}),
    # HighLevel says the budget is spent, and we knew of no send: those it counted are
    # counted for one interval from now
    (RateLimit(max=100, remaining=0, interval_ms=10_000), 200,
     {"used": 100, "paused_until": T0 + 10 * S, "pause_reason": "burst"}),
    # a 429 without headers: pause for the interval we know
    (RateLimit(), 429, {"paused_until": T0 + 10 * S, "pause_reason": "429"}),
    # a different interval is learned
    (RateLimit(max=100, remaining=50, interval_ms=60_000), 200,
     {"interval": 60 * S, "used": 50}),
    # daily budget spent: pause until midnight UTC
    (RateLimit(daily_limit=1000, daily_remaining=0), 200,
     {"daily_used": 1000, "pause_reason": "daily",
      "paused_until": dt.datetime(2026, 1, 6, tzinfo=dt.UTC)}),
])
def test_learn_from_headers(rate, status, expect):
    st = state()
    learn(st, rate, status=status, now=T0)
    for name, value in expect.items():
        assert getattr(st, name) == value, name


def test_retry_after_on_429_is_honoured_but_clamped():
    st = state()
    learn(st, RateLimit(), status=429, now=T0, retry_after=30)
    assert st.paused_until == T0 + 30 * S
    st = state()
    learn(st, RateLimit(), status=429, now=T0, retry_after=10_000)
    assert st.paused_until == T0 + dt.timedelta(minutes=10)


def test_headers_never_shorten_our_own_count():
    st = state()
    reserve(st, 30, T0, token="a")
    learn(st, RateLimit(max=100, remaining=95), status=200, now=T0)
    assert st.used == 30  # in-flight sends HighLevel has not counted yet still count


def test_store_limiter_shares_budget_and_pauses(store):
    limiter = StoreLimiter(store.dialect, burst=(10, 10.0), daily=1000)
    with store.engine.begin() as conn:
        assert limiter.reserve_many(conn, {"loc_a": 8, "loc_b": 3}, now=T0,
                                    token="lease-one") == {"loc_a": 8, "loc_b": 3}
    with store.engine.begin() as conn:  # another forwarder, same store
        assert limiter.reserve_many(conn, {"loc_a": 8}, now=T0, token="lease-two") == {
            "loc_a": 2}
        paused = set(conn.execute(limiter.paused_resources(T0)).scalars())
    assert paused == {"loc_a"}
    with store.engine.begin() as conn:
        ok = Outcome("delivered", "delivered", http_status=200)
        low = Outcome("delivered", "delivered", http_status=200,
                      rate_limit=RateLimit(max=5, remaining=0, interval_ms=10_000))
        assert limiter.observe_batch(conn, [(claim("loc_a", "lease-one"), ok)] * 8
                                     + [(claim("loc_a", "lease-two"), ok)] * 2
                                     + [(claim("loc_b", "lease-one"), low)], now=T0 + S) == set()
        assert limiter.describe(conn, "loc_b")["burstMax"] == 5
        assert set(conn.execute(limiter.paused_resources(T0 + S)).scalars()) == {
            "loc_a", "loc_b"}
        # Answered at T0+1: counted until T0+11, not until the end of a guessed window.
        assert set(conn.execute(limiter.paused_resources(T0 + 10.9 * S)).scalars()) == {
            "loc_a", "loc_b"}
        assert set(conn.execute(limiter.paused_resources(T0 + 11 * S)).scalars()) == set()


def test_a_purged_resource_starts_afresh_in_a_process_that_knew_it(store):
    # The limiter remembers which resources have a row (one statement per batch); a
    # location purged meanwhile (its rate_limits row deleted) gets a new row, not an error.
    limiter = StoreLimiter(store.dialect, burst=(10, 10.0), daily=1000)
    with store.engine.begin() as conn:
        assert limiter.reserve_many(conn, {"loc_a": 10}, now=T0, token="one") == {"loc_a": 10}
    purge_location(store.engine, "loc_a")
    with store.engine.begin() as conn:
        assert limiter.describe(conn, "loc_a") is None
        assert limiter.reserve_many(conn, {"loc_a": 4, "loc_b": 1}, now=T0 + S,
                                    token="two") == {"loc_a": 4, "loc_b": 1}
        assert limiter.describe(conn, "loc_a")["used"] == 4


def claim(location_id: str, lease: str):
    return make_claim(location_id=location_id, lease_token=lease)
