"""Rate limits: the pure window arithmetic as tables, and the store-backed limiter."""

from __future__ import annotations

import datetime as dt

import pytest

from service.highlevel.client import RateLimit
from service.store.budget import (
    IN_FLIGHT_HOLD,
    allowance,
    answered,
    dump_sends,
    load_sends,
    reserved_at,
)
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


def test_answers_count_from_their_own_time_not_from_when_the_batch_was_recorded():
    st = state()
    assert reserve(st, 100, T0, token="a") == 100
    answered(st, "a", 40, T0 + 3 * S, at=T0 + 1 * S)  # the batch recorded at T0+3...
    answered(st, "a", 60, T0 + 3 * S, at=T0 + 2.5 * S)  # ...its answers came earlier
    assert reserve(st, 100, T0 + 10.9 * S, token="b") == 0
    assert reserve(st, 100, T0 + 11 * S, token="b") == 40
    st = state()
    reserve(st, 10, T0, token="a")
    answered(st, "a", 10, T0 + S, at=T0 + 5 * S)  # never later than its recording
    assert st.window_ends_at == T0 + 11 * S


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


# -- HighLevel's remaining figure as an allowance (budget.allowance) ----------------------

def answer_batch(st, token, n, *, remaining, now, status=200, with_since=True):
    """What ``StoreLimiter.observe_batch`` does for one resource's batch."""
    since = reserved_at(st, token, IN_FLIGHT_HOLD) if with_since else None
    answered(st, token, n, now)
    learn(st, RateLimit(max=st.burst_max, remaining=remaining, interval_ms=10_000),
          status=status, now=now, sent_since=since, own=n)


def test_a_new_window_releases_what_highlevel_says_remains_at_once():
    st = state()
    assert reserve(st, 100, T0, token="a") == 100
    answer_batch(st, "a", 100, remaining=0, now=T0 + S)  # the window is spent
    assert st.pause_reason == "burst" and reserve(st, 10, T0 + 5 * S, token="b") == 0
    # The log lets sends go again only as the old answers age out (T0+11)...
    assert reserve(st, 10, T0 + 11 * S, token="b") == 10
    # ...but the first of them says HighLevel's new window has room for 89 more.
    answer_batch(st, "b", 10, remaining=89, now=T0 + 11.2 * S)
    assert st.paused_until is None
    assert reserve(st, 200, T0 + 11.2 * S, token="c") == 89
    assert reserve(st, 1, T0 + 11.2 * S, token="d") == 0  # used up: the log rules again
    assert st.pause_reason == "burst"


def test_the_allowance_leaves_out_what_highlevel_may_not_have_counted():
    st = state()
    reserve(st, 100, T0, token="a")
    answer_batch(st, "a", 100, remaining=0, now=T0 + S)
    reserve(st, 5, T0 + 11 * S, token="b")
    reserve(st, 5, T0 + 11.1 * S, token="c")  # in flight when "b"'s answer came
    answer_batch(st, "b", 5, remaining=90, now=T0 + 11.2 * S)
    assert allowance(st) == 90 - 5
    # "c"'s figure may not count "b"'s sends (they were in flight together): 88 - 5 = 83,
    # less than the 85 we have. Both are bounds; the larger stands.
    answer_batch(st, "c", 5, remaining=88, now=T0 + 11.3 * S)
    assert allowance(st) == 85
    # The log's own room is larger still by now ("a"'s answers aged out at T0+11, 12
    # sends counted since): the larger of the two bounds is granted.
    assert reserve(st, 100, T0 + 11.3 * S, token="d") == 100 - 12


def after_a_spent_window(*, remaining: int) -> LimitState:
    """A state whose window of 100 was spent at T0 (answered at T0+1), then 10 sends at
    T0+11 whose answers (T0+11.2) said ``remaining``."""
    st = state()
    reserve(st, 100, T0, token="a")
    answer_batch(st, "a", 100, remaining=0, now=T0 + S)
    reserve(st, 10, T0 + 11 * S, token="b")
    answer_batch(st, "b", 10, remaining=remaining, now=T0 + 11.2 * S)
    return st


def test_a_429_ends_the_allowance():
    st = after_a_spent_window(remaining=50)
    assert allowance(st) == 50
    learn(st, RateLimit(), status=429, now=T0 + 11.3 * S)
    assert allowance(st) == 0 and st.pause_reason == "429"
    assert reserve(st, 1, T0 + 11.4 * S, token="c") == 0


def test_the_allowance_is_kept_with_the_send_log():
    st = after_a_spent_window(remaining=89)
    reserve(st, 9, T0 + 11.2 * S, token="c")
    copy = state()
    load_sends(copy, dump_sends(st))
    assert allowance(copy) == allowance(st) == 80


@pytest.mark.parametrize("model", ["fixed", "sliding"])
@pytest.mark.parametrize("seed", range(4))
def test_no_window_of_highlevel_ever_takes_more_than_its_limit(model, seed):
    """A forwarder's batches against a simulated HighLevel that counts what it receives,
    with fixed windows (each starts at the first request an interval after the last one
    started, as the fake's) or a sliding one. Views trickle in for 9 s (100 sends), then
    300 arrive at once: never a 429; with fixed windows the allowance sends the burst as
    each new window opens, while the send log alone lets it out at the trickle's pace."""
    runs = {with_since: simulate(model, seed, with_since) for with_since in (True, False)}
    for with_since, (finished, refused) in runs.items():
        assert refused == 0, (model, with_since)
        assert finished < T0 + 60 * S
    if model == "fixed":
        assert runs[True][0] < runs[False][0] - 5 * S, runs


def simulate(model: str, seed: int, with_since: bool):
    """Documents due: one every 0.09 s for 9 s, then 300 at T0+9.5 s. Up to 4 batches of
    up to 32 in flight; a send is received 0-0.1 s after its batch was reserved and
    answered 0-0.1 s after that. Return (the last answer, how many HighLevel refused)."""
    import heapq
    import random

    rng = random.Random(seed)
    st, tick, limit, interval = state(), 0.02 * S, 100, 10 * S
    arrivals = sorted([T0 + 0.09 * i * S for i in range(100)] + [T0 + 9.5 * S] * 300)
    hl = {"start": None, "count": 0, "recent": []}
    receipts, batches, left, refused, n_batch, t = [], [], 0, 0, 0, T0
    finished = T0

    def receive(at):
        if model == "fixed":
            if hl["start"] is None or at - hl["start"] >= interval:
                hl["start"], hl["count"] = at, 0
            taken = hl["count"] < limit
            hl["count"] += taken
            return taken, limit - hl["count"]
        hl["recent"] = [r for r in hl["recent"] if r > at - interval]
        taken = len(hl["recent"]) < limit
        if taken:
            hl["recent"].append(at)
        return taken, limit - len(hl["recent"])

    while arrivals or left or batches:
        while arrivals and arrivals[0] <= t:
            arrivals.pop(0)
            left += 1
        while receipts and receipts[0][0] <= t:  # HighLevel, in the order it receives
            at, _, send = heapq.heappop(receipts)
            send["ok"], send["remaining"] = receive(at)
        for batch in [b for b in batches if all(s["answer"] <= t and "ok" in s
                                                for s in b["sends"])]:
            batches.remove(batch)
            ok = [s for s in batch["sends"] if s["ok"]]
            refused += len(batch["sends"]) - len(ok)
            left += len(batch["sends"]) - len(ok)
            answer_batch(st, batch["token"], len(batch["sends"]),
                         remaining=min(s["remaining"] for s in batch["sends"]),
                         status=200 if len(ok) == len(batch["sends"]) else 429, now=t,
                         with_since=with_since)
            finished = t
        while left and len(batches) < 4:
            n_batch += 1
            granted = reserve(st, min(left, 32), t, token=f"b{n_batch}")
            if not granted:
                break
            left -= granted
            sends = []
            for _ in range(granted):
                at = t + rng.uniform(0, 0.1) * S
                send = {"answer": at + rng.uniform(0, 0.1) * S}
                heapq.heappush(receipts, (at, id(send), send))
                sends.append(send)
            batches.append({"token": f"b{n_batch}", "sends": sends})
        t += tick
        assert t < T0 + 120 * S, "the simulation did not finish"
    return finished, refused
