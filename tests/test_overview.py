"""The operator's overview (``Store.overview``) and the hourly rollup behind it.

Views are recorded through the API and the store; a forwarder with the real HighLevel
client sends them to the fake HighLevel over loopback; the clock is moved by hand. The
counts must be exact whether they are still counted live, already folded into the rollup
(by one forwarder, or by several at once), or their rows pruned since.
"""

from __future__ import annotations

import datetime as dt
import threading

import pytest
import sqlalchemy as sa

from service.forward.forwarder import Forwarder
from service.highlevel.client import HighLevelClient, build_pool
from service.store.db import delivery_log, events, stats_hourly
from service.store.engine import create_engine
from service.store.queue import Store
from service.store.stats import percentile

from .conftest import T0, ingest_headers, make_event, make_view
from .fakes import InlineExecutor
from .test_pixel import CHROME

HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)
FOLDED = dt.timedelta(minutes=5)  # older than the fold's lag (60 s window + 2 min)
ZERO = {"received": 0, "filtered": 0, "delivered": 0, "failed": 0}


def token_for(location: str) -> str:
    return f"pit-{location}-0123456789abcdef"


@pytest.fixture
def forwarder(store, vault, clock, fake_highlevel):
    """A forwarder on the real client over real HTTP, sends inline, no randomness."""
    session = build_pool(4)
    made = []

    def make(**settings) -> Forwarder:
        made.append(Forwarder(store, vault, HighLevelClient(session, fake_highlevel.url),
                              executor=InlineExecutor(), clock=clock, rand=lambda: 1.0,
                              **settings))
        return made[-1]

    yield make
    session.close()


def add_tokens(vault, clock, *locations: str) -> None:
    for location in locations:
        vault.set_token(location, access_token=token_for(location), now=clock())


def record(store, clock, document: str, count: int = 1, **overrides) -> None:
    """``count`` views of one invoice (loc_1 unless overridden) in one request, now."""
    store.record_views([make_view(clock(), document_id=document, **overrides)] * count,
                       now=clock())


def drain(forwarder: Forwarder, clock) -> None:
    """Send everything due now."""
    for _ in range(100):
        if forwarder.forward_once(now=clock()) == 0:
            return
    raise AssertionError("still sending after 100 batches")


def entry(overview: dict, start: dt.datetime, series: str = "hourly") -> dict:
    [found] = [e for e in overview[series] if e["start"] == start]
    return {k: v for k, v in found.items() if k != "start"}


def counted(overview: dict) -> dict:
    """What is counted from views and sends (the queue is the documents' state now)."""
    return {k: overview[k] for k in ("hourly", "daily", "latency")}


def rollup_rows(store) -> int:
    with store.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(stats_hourly)).scalar()


# -- what is counted, and where ------------------------------------------------------------


def test_views_received_filtered_delivered_and_failed_per_hour_and_day(
        store, vault, clock, client, forwarder, fake_highlevel):
    add_tokens(vault, clock, "loc_1")
    fwd = forwarder()
    fake_highlevel.script(404, document_id="inv_gone")
    # Yesterday 09:10: two views of one invoice, sent together.
    clock.now = T0 - DAY - dt.timedelta(hours=2, minutes=50)
    record(store, clock, "inv_old", 2)
    drain(fwd, clock)
    # 10:05 today: three views of inv_a (one send), two machine opens (not forwarded), one
    # view of an invoice HighLevel does not know (dead: failed).
    clock.now = T0 - dt.timedelta(hours=1, minutes=55)
    record(store, clock, "inv_a", 3)
    record(store, clock, "inv_a", 2, forward=False, verdict="scanner")
    record(store, clock, "inv_gone")
    drain(fwd, clock)
    # 12:01: one client posts the same event twice through the API (a repeat: one row
    # counting two views, one view of the document to send).
    clock.now = T0 + dt.timedelta(minutes=1)
    for _ in range(2):
        answer = client.post("/v1/events", headers=ingest_headers(), json=make_event(
            invoiceId="inv_c", ip="198.51.100.23", userAgent=CHROME))
        assert answer.status_code == 202, answer.get_json()
    drain(fwd, clock)
    now = T0 + dt.timedelta(minutes=30)

    seen = store.overview(now=now)
    assert [e["start"] for e in seen["hourly"]] == [T0 - n * HOUR for n in range(23, -1, -1)]
    assert [e["start"] for e in seen["daily"]] == [
        dt.datetime(2026, 1, 5, tzinfo=dt.UTC) - n * DAY for n in range(29, -1, -1)]
    assert entry(seen, T0 - 2 * HOUR) == {"received": 6, "filtered": 2, "delivered": 3,
                                          "failed": 1}
    assert entry(seen, T0 - HOUR) == ZERO
    assert entry(seen, T0) == {"received": 2, "filtered": 0, "delivered": 1, "failed": 0}
    # Yesterday's 09:00 is 27 hours back: not in the 24 hours, but in its day.
    assert sum(e["received"] for e in seen["hourly"]) == 8
    assert entry(seen, dt.datetime(2026, 1, 4, tzinfo=dt.UTC), "daily") == {
        "received": 2, "filtered": 0, "delivered": 2, "failed": 0}
    assert entry(seen, dt.datetime(2026, 1, 5, tzinfo=dt.UTC), "daily") == {
        "received": 8, "filtered": 2, "delivered": 4, "failed": 1}
    assert sum(e["received"] for e in seen["daily"]) == 10

    # The forwarder folds about once a minute what is older than its lag: so far yesterday
    # (and an empty hour before 10:05); today's views were counted live. All folded, the
    # same numbers.
    assert rollup_rows(store) == 2
    clock.now = now + FOLDED
    fwd.forward_once(now=clock())
    assert rollup_rows(store) == 3  # 09:00 yesterday, 10:00 and 12:00 today
    assert counted(store.overview(now=now)) == counted(seen)


def test_views_arriving_after_a_fold_add_to_the_folded_hour(store, vault, clock, forwarder):
    add_tokens(vault, clock, "loc_1")
    fwd = forwarder()
    record(store, clock, "inv_a", 2)
    drain(fwd, clock)
    clock.advance(FOLDED.total_seconds())
    assert store.fold_stats(now=clock()) == 1
    assert rollup_rows(store) == 1
    record(store, clock, "inv_a")  # same hour, after the watermark: counted live
    record(store, clock, "inv_b", forward=False)
    drain(fwd, clock)
    expected = {"received": 4, "filtered": 1, "delivered": 3, "failed": 0}
    assert entry(store.overview(now=clock()), T0) == expected
    clock.advance(FOLDED.total_seconds())
    assert store.fold_stats(now=clock()) == 1
    assert entry(store.overview(now=clock()), T0) == expected


def test_a_fold_never_takes_views_younger_than_the_lag(store, clock):
    record(store, clock, "inv_a")
    # A minute later the view could still get a client's repeats: not folded yet.
    clock.advance(60)
    store.fold_stats(now=clock())
    assert rollup_rows(store) == 0
    assert entry(store.overview(now=clock()), T0)["received"] == 1
    clock.advance(FOLDED.total_seconds())
    store.fold_stats(now=clock())
    assert rollup_rows(store) == 1
    assert entry(store.overview(now=clock()), T0)["received"] == 1


# -- several forwarders, retention ---------------------------------------------------------


def test_folding_again_or_by_several_forwarders_at_once_never_double_counts(
        store, vault, clock, forwarder, migrated_db_url):
    add_tokens(vault, clock, "loc_1")
    fwd = forwarder()
    for hour in range(6):  # views over six hours, each hour's sent
        clock.now = T0 + hour * HOUR
        record(store, clock, f"inv_{hour}", hour + 1)
        record(store, clock, "inv_machine", forward=False)
        drain(fwd, clock)
    now = T0 + 6 * HOUR
    live = store.overview(now=now)
    assert sum(e["received"] for e in live["hourly"]) == 21 + 6
    assert sum(e["delivered"] for e in live["hourly"]) == 21

    # Four "processes" (a store each, on its own engine) fold the same range at once,
    # each several times.
    stores = [Store(create_engine(migrated_db_url)) for _ in range(4)]
    start = threading.Barrier(len(stores))
    folded, errors = [], []

    def run(other: Store) -> None:
        try:
            start.wait(timeout=30)
            folded.extend(other.fold_stats(now=now + FOLDED) for _ in range(3))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(other,)) for other in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for other in stores:
        other.engine.dispose()
    assert errors == []
    assert sum(folded) >= 1 and len(folded) == 12
    assert rollup_rows(store) == 6
    assert counted(store.overview(now=now)) == counted(live)
    assert store.fold_stats(now=now + FOLDED) == 0  # nothing new
    assert counted(store.overview(now=now)) == counted(live)


def test_counts_stay_after_the_events_and_the_log_are_pruned(store, vault, clock, forwarder,
                                                             fake_highlevel):
    add_tokens(vault, clock, "loc_1")
    fwd = forwarder(event_days=1, log_days=1)
    fake_highlevel.script(422, document_id="inv_bad")
    record(store, clock, "inv_a", 3)
    record(store, clock, "inv_bad")
    record(store, clock, "inv_m", 2, forward=False)
    drain(fwd, clock)
    later = T0 + 2 * DAY
    before = store.overview(now=later)
    today = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
    assert entry(before, today, "daily") == {"received": 6, "filtered": 2, "delivered": 3,
                                             "failed": 1}
    clock.now = later
    fwd.forward_once(now=later)  # folds, then prunes what is older than a day
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(events)).scalar() == 0
        assert conn.execute(sa.select(sa.func.count()).select_from(delivery_log)).scalar() == 0
    assert counted(store.overview(now=later)) == counted(before)


def test_a_first_fold_catches_up_on_the_30_days_shown(store, clock):
    """After the upgrade that adds the rollup, the first fold counts what is still kept."""
    clock.now = T0 - 20 * DAY
    record(store, clock, "inv_a", 4)
    clock.now = T0 - 40 * DAY  # older than the overview shows
    record(store, clock, "inv_b", 5)
    live = store.overview(now=T0)
    assert sum(e["received"] for e in live["daily"]) == 4
    assert store.fold_stats(now=T0) > 1  # in ranges of a few hours
    assert counted(store.overview(now=T0)) == counted(live)
    assert store.overview(now=T0 + 11 * DAY)["daily"][0]["received"] == 0  # 31 days back


# -- the queue and the latency -------------------------------------------------------------


def test_queue_by_state(store, vault, clock, forwarder, fake_highlevel):
    add_tokens(vault, clock, "loc_1")
    fwd = forwarder()
    fake_highlevel.script(404, document_id="inv_dead")
    record(store, clock, "inv_idle")
    record(store, clock, "inv_idle_too")
    record(store, clock, "inv_dead")
    record(store, clock, "inv_parked", location_id="loc_without_token")
    assert store.overview(now=clock())["queue"]["pending"] == 4  # never folded: all live
    drain(fwd, clock)
    record(store, clock, "inv_leased")
    [claim] = store.claim_due(now=clock(), limit=10)
    assert claim.document_id == "inv_leased"
    record(store, clock, "inv_waiting")
    # Idle is as the last fold counted it: the forwarder folded before it sent.
    assert store.overview(now=clock())["queue"] == {
        "pending": 1, "leased": 1, "blocked": 1, "dead": 1, "idle": 0}
    clock.advance(60)
    assert store.renew_leases([claim.lease_token], now=clock())  # its holder is still at it
    store.fold_stats(now=clock())  # the next fold, a minute later
    assert store.overview(now=clock())["queue"] == {
        "pending": 1, "leased": 1, "blocked": 1, "dead": 1, "idle": 2}
    after_lease = clock() + dt.timedelta(seconds=store.lease.total_seconds() + 1)
    assert store.overview(now=after_lease)["queue"] == {
        "pending": 2, "leased": 0, "blocked": 1, "dead": 1, "idle": 2}


def test_view_to_delivery_p50_and_p99_from_known_waits(store, vault, clock, forwarder):
    locations = [f"loc_{i}" for i in range(4)]
    add_tokens(vault, clock, *locations)
    fwd = forwarder()
    # A send 25 hours ago: outside the 24 hours the latency covers.
    clock.now = T0 - 25 * HOUR
    record(store, clock, "inv_old", location_id="loc_0")
    clock.advance(3600)
    drain(fwd, clock)
    # 100 invoices, one every second, all sent 100 s after the first: waits 100 s .. 1 s.
    clock.now = T0
    for i in range(100):
        record(store, clock, f"inv_{i}", location_id=locations[i % 4])
        clock.advance(1)
    drain(fwd, clock)
    latency = store.overview(now=clock())["latency"]
    assert latency == {"p50Ms": 50_000, "p99Ms": 99_000, "samples": 100}
    clock.advance(FOLDED.total_seconds())
    assert store.fold_stats(now=clock()) >= 1
    assert store.overview(now=clock())["latency"] == latency


def test_no_sends_no_percentiles(store, clock):
    seen = store.overview(now=clock())
    assert seen["latency"] == {"p50Ms": None, "p99Ms": None, "samples": 0}
    assert all(e == {"start": e["start"], **ZERO} for e in seen["hourly"] + seen["daily"])
    assert seen["queue"] == {"pending": 0, "leased": 0, "blocked": 0, "dead": 0, "idle": 0}


@pytest.mark.parametrize(("wait", "shown"), [
    (0.042, 42), (0.999, 1000), (1.049, 1000), (1.05, 1100), (9.95, 10_000), (754.3, 750_000),
])
def test_waits_are_kept_to_two_significant_digits(store, vault, clock, forwarder, wait, shown):
    add_tokens(vault, clock, "loc_1")
    fwd = forwarder()
    record(store, clock, "inv_a")
    clock.advance(wait)
    drain(fwd, clock)
    expected = {"p50Ms": shown, "p99Ms": shown, "samples": 1}
    assert store.overview(now=clock())["latency"] == expected
    clock.advance(FOLDED.total_seconds())
    assert store.fold_stats(now=clock()) >= 1
    assert store.overview(now=clock())["latency"] == expected


@pytest.mark.parametrize(("counts", "pct", "expected"), [
    ({5: 1}, 50, 5), ({5: 1}, 99, 5), ({1: 50, 2: 50}, 50, 1), ({1: 50, 2: 50}, 51, 2),
    ({1: 98, 9: 2}, 99, 9), ({1: 99, 9: 1}, 99, 1), ({}, 50, None),
])
def test_percentiles_are_nearest_rank(counts, pct, expected):
    from collections import Counter

    assert percentile(Counter(counts), pct) == expected
