"""Delivery guarantees against the fake HighLevel over real HTTP, in simulated time.

The forwarder (real ``HighLevelClient`` over libcurl) talks to
``FakeHighLevel`` on loopback, which enforces HighLevel's rate limit per token. One
hand-moved clock drives both: the forwarder reads the ``clock`` fixture, and the fake's
rate-limit windows read the same instant as seconds since ``T0``. ``drive`` calls
``forward_once`` until nothing is left; when a call handles nothing it jumps the clock to
the next moment something can happen (a row comes due, a pause or a lease ends), so no
test waits for a window in real time and every time below is simulated.

Each location has its own token, so the fake's per-token limit is HighLevel's
per-location one. Sends go through a thread pool of ``FORWARD_CONCURRENCY`` as in
production (the clock stands still during a batch), which also keeps the run short: the
fake checks each request against HighLevel's OpenAPI document.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import sqlalchemy as sa

from service.forward.forwarder import Forwarder
from service.highlevel.client import HighLevelClient, build_pool
from service.store.db import delivery_log, documents, rate_limits
from service.store.deliverylog import LogFilter
from service.store.documents import PENDING
from service.store.engine import read_only

from .conftest import T0, admin_headers, make_view
from .fake_highlevel import FakeHighLevel, ReceivedRequest

BURST, INTERVAL = 100, 10.0  # HighLevel's default: 100 requests per 10 s per location
CONCURRENCY = 16  # FORWARD_CONCURRENCY's default
MAX_ITERATIONS = 10_000
IDLE_STEP = 0.5  # seconds the clock moves when nothing at all is scheduled
MIDNIGHT = dt.datetime.combine(T0.date() + dt.timedelta(days=1), dt.time(), dt.UTC)


def token_for(location: str) -> str:
    return f"pit-{location}-0123456789abcdef"


# -- the fake HighLevel, seen in simulated time --------------------------------------------


@dataclass(frozen=True)
class Answered:
    """One request the fake answered, stamped with the simulated time it was answered at."""

    at: dt.datetime
    token: str | None
    document_id: str | None
    status: int
    batch: int  # Recorder.batch when it was answered (a test counts forward_once calls)


class Recorder:
    """The fake's ``on_request`` hook: what it answered, when (simulated), in arrival order."""

    def __init__(self, clock):
        self.clock = clock
        self.batch = 0
        self.answered: list[Answered] = []

    def __call__(self, rec: ReceivedRequest) -> None:
        # Called before the answer leaves the fake, so the forwarder's clock has not moved.
        self.answered.append(
            Answered(self.clock(), rec.token, rec.document_id, rec.status, self.batch))

    def of(self, location: str) -> list[Answered]:
        return [a for a in self.answered if a.token == token_for(location)]

    def statuses(self) -> Counter:
        return Counter(a.status for a in self.answered)


@pytest.fixture
def hl(clock) -> Iterator[FakeHighLevel]:
    """The fake HighLevel, enforcing 100 / 10 s per token in the tests' simulated time."""
    server = FakeHighLevel(rate_limit_max=BURST, rate_limit_interval_ms=int(INTERVAL * 1000),
                           clock=lambda: (clock() - T0).total_seconds())
    server.on_request = Recorder(clock)
    with server:
        yield server
    assert server.violations == [], server.violations


@pytest.fixture
def make_forwarder(store, vault, hl, clock):
    """A forwarder on the real client over real HTTP; no randomness (full jitter at 1.0)."""
    sessions, pools = [], []

    def make(**overrides) -> Forwarder:
        session = build_pool(CONCURRENCY)
        sessions.append(session)
        pool = ThreadPoolExecutor(CONCURRENCY, "send")
        pools.append(pool)
        settings = {"executor": pool, "concurrency": CONCURRENCY, "clock": clock,
                    "rand": lambda: 1.0}
        settings.update(overrides)
        return Forwarder(store, vault, HighLevelClient(session, hl.url), **settings)

    yield make
    for pool in pools:
        pool.shutdown()
    for session in sessions:
        session.close()


# -- helpers -------------------------------------------------------------------------------


def add_locations(vault, clock, *locations: str) -> None:
    for location in locations:
        vault.set_token(location, access_token=token_for(location), now=clock())


def record(store, clock, location: str, count: int, *, start: int = 0) -> list[str]:
    """Record one view each of ``count`` distinct invoices at ``location``; return event ids."""
    views = [make_view(clock(), location_id=location, document_id=f"{location}-inv-{i}")
             for i in range(start, start + count)]
    return [a.id for a in store.record_views(views, now=clock())]


def pending(store, location: str | None = None) -> int:
    d = documents.c
    query = sa.select(sa.func.count()).where(d.status == PENDING)
    if location is not None:
        query = query.where(d.location_id == location)
    with read_only(store.engine) as conn:
        return conn.execute(query).scalar()


def next_wakeup(store, now: dt.datetime) -> dt.datetime:
    """The next moment a claim could find work: a row due, a lease or a pause ending."""
    d, r = documents.c, rate_limits.c
    with read_only(store.engine) as conn:
        candidates = [
            conn.execute(sa.select(sa.func.min(d.due_at))
                         .where(d.status == PENDING, d.due_at > now)).scalar(),
            conn.execute(sa.select(sa.func.min(d.locked_until))
                         .where(d.status == PENDING, d.locked_until > now)).scalar(),
            conn.execute(sa.select(sa.func.min(r.paused_until))
                         .where(r.paused_until > now)).scalar(),
        ]
    future = [c for c in candidates if c is not None]
    return min(future) if future else now + dt.timedelta(seconds=IDLE_STEP)


def drive(forwarder: Forwarder, store, clock, *, until: Callable[[], bool] | None = None,
          tick: Callable[[], None] | None = None) -> int:
    """Run ``forward_once`` until ``until()`` (default: nothing pending); return iterations.

    When a call handles nothing, the clock jumps to the next wakeup. ``tick`` runs before
    every call (to change the fake's behaviour at some simulated time).
    """
    until = until or (lambda: pending(store) == 0)
    for iteration in range(MAX_ITERATIONS):
        if tick is not None:
            tick()
        if until():
            return iteration
        if forwarder.forward_once(now=clock()) == 0:
            clock.now = next_wakeup(store, clock())
    raise AssertionError(
        f"still not done after {MAX_ITERATIONS} iterations at {clock()}: "
        f"queue {store.queue_depth()}, rate limits {limit_rows(store)}")


def log_rows(store, location: str | None = None) -> list[dict]:
    log = delivery_log.c
    query = sa.select(delivery_log).order_by(log.id)
    if location is not None:
        query = query.where(log.location_id == location)
    with read_only(store.engine) as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


def limit_rows(store) -> dict[str, dict]:
    with read_only(store.engine) as conn:
        return {row.resource: dict(row._mapping) for row in conn.execute(sa.select(rate_limits))}


def doc_rows(store, location: str) -> list[dict]:
    with read_only(store.engine) as conn:
        return [dict(row._mapping) for row in conn.execute(
            sa.select(documents).where(documents.c.location_id == location))]


def completed_at(store, location: str) -> dt.datetime:
    """When the location's last view was delivered (from the delivery log)."""
    return max(r["at"] for r in log_rows(store, location) if r["outcome"] == "delivered")


def busiest_window(times: list[dt.datetime], seconds: float = INTERVAL) -> int:
    """The most requests in any half-open window [t, t + seconds) starting at a request."""
    times = sorted(times)
    width = dt.timedelta(seconds=seconds)
    return max((sum(1 for u in times if t <= u < t + width) for t in times), default=0)


def assert_each_delivered_once(hl: FakeHighLevel, store, locations, per_location: int) -> None:
    """Every invoice got exactly one 200 from the fake, and nothing was sent after it."""
    answers = defaultdict(list)
    for a in hl.on_request.answered:
        answers[(a.token, a.document_id)].append(a.status)
    for location in locations:
        for i in range(per_location):
            seen = answers[(token_for(location), f"{location}-inv-{i}")]
            assert seen.count(200) == 1 and seen[-1] == 200, (
                f"{location}-inv-{i}: the fake answered {seen}; want one 200, last")
    assert store.queue_depth().get(PENDING, 0) == 0, store.queue_depth()


def seconds(delta: dt.timedelta) -> float:
    return delta.total_seconds()


# -- 1. throughput at the limit's pace -----------------------------------------------------


def test_thousand_views_over_five_locations_at_the_limits_pace_without_a_429(
        store, vault, clock, hl, make_forwarder):
    locations = [f"loc-{n}" for n in range(5)]
    per_location = 200
    add_locations(vault, clock, *locations)
    for location in locations:
        record(store, clock, location, per_location)
    forwarder = make_forwarder()

    iterations = drive(forwarder, store, clock)

    assert_each_delivered_once(hl, store, locations, per_location)
    statuses = hl.on_request.statuses()
    assert statuses == {200: 1000}, f"the fake answered {dict(statuses)}; want 1000 x 200"
    # The last send of a location can happen at the start of its last window.
    windows = math.ceil(per_location / BURST)
    ideal = (windows - 1) * INTERVAL
    makespan = seconds(max(completed_at(store, loc) for loc in locations) - T0)
    assert makespan <= 1.5 * ideal + INTERVAL, (
        f"simulated makespan {makespan} s; ideal {ideal} s at {BURST}/{INTERVAL:g} s")
    for location in locations:
        sent = [a.at for a in hl.on_request.of(location)]
        assert busiest_window(sent) <= BURST, f"{location}: {busiest_window(sent)} in 10 s"
    print(f"\n[throughput] 1000 views, 5 locations: makespan {makespan:g} s simulated "
          f"(ideal {ideal:g} s), 429s {statuses[429]}, forward_once calls {iterations}")


def test_two_forwarders_share_each_locations_budget(store, vault, clock, hl, make_forwarder):
    """Two forwarders (threads, as two processes would be) claim at the same instants."""
    locations = [f"loc-{n}" for n in range(3)]
    per_location = 120
    add_locations(vault, clock, *locations)
    for location in locations:
        record(store, clock, location, per_location)
    forwarders = [make_forwarder(), make_forwarder()]

    with ThreadPoolExecutor(len(forwarders), "forwarder") as both:
        for _ in range(MAX_ITERATIONS):
            if pending(store) == 0:
                break
            if sum(both.map(lambda f: f.forward_once(now=clock()), forwarders)) == 0:
                clock.now = next_wakeup(store, clock())

    assert_each_delivered_once(hl, store, locations, per_location)
    statuses = hl.on_request.statuses()
    assert statuses == {200: len(locations) * per_location}, dict(statuses)
    for location in locations:
        sent = [a.at for a in hl.on_request.of(location)]
        assert busiest_window(sent) <= BURST, f"{location}: {busiest_window(sent)} in 10 s"
    makespan = seconds(max(completed_at(store, loc) for loc in locations) - T0)
    assert makespan <= (math.ceil(per_location / BURST) - 1) * INTERVAL + INTERVAL, makespan


# -- 2. the limit drops mid-run ------------------------------------------------------------


@pytest.mark.parametrize("lowered", ["mid_window", "at_window_start"])
def test_a_lowered_limit_is_followed(store, vault, clock, hl, make_forwarder, lowered):
    """HighLevel lowers the limit to 25 / 10 s (a trial token's) while views are queued.

    Lowered at a window's start, the forwarder's first batch fits (16 < 25) and teaches it
    the new max: zero 429s. Lowered mid-window after 32 sends, a location's sends claimed
    at the old limit before any answer told it the new max (one batch) cannot avoid 429s;
    those are the only ones.
    """
    locations = ["loc-a", "loc-b"]
    per_location = 130
    new_max = 25
    add_locations(vault, clock, *locations)
    for location in locations:
        record(store, clock, location, per_location)
    forwarder = make_forwarder()
    change = {}  # how many requests the fake had answered when it lowered the limit

    def tick():
        hl.on_request.batch += 1  # one forward_once call follows
        if change:
            return
        due = (len(hl.requests) >= 2 * CONCURRENCY if lowered == "mid_window"
               else clock() >= T0 + dt.timedelta(seconds=INTERVAL))
        if due:
            hl.rate_limit_max = new_max
            change["index"], change["at"] = len(hl.requests), clock()

    drive(forwarder, store, clock, tick=tick)

    assert change, "the limit was never lowered"
    assert_each_delivered_once(hl, store, locations, per_location)
    answered = hl.on_request.answered
    before, after = answered[:change["index"]], answered[change["index"]:]
    assert all(a.status == 200 for a in before)
    spent = [r for r in log_rows(store) if r["attempt"] != 1]
    assert spent == [], f"429s spent retry attempts: {spent[:3]}"
    early = {}  # location -> 429s in the batch that brought its first answer with the new max
    for location in locations:
        mine = [a for a in after if a.token == token_for(location)]
        learned = mine[0].batch  # claimed at the old limit; its answers carry the new one
        early[location] = sum(a.status == 429 for a in mine if a.batch == learned)
        late = [a for a in mine if a.status == 429 and a.batch > learned]
        assert late == [], f"{location}: {len(late)} 429s after it was told the new max"
        sent = [a.at for a in mine if a.batch > learned]
        assert busiest_window(sent) <= new_max, (
            f"{location}: {busiest_window(sent)} requests in 10 s after the limit became "
            f"{new_max}")
        with read_only(store.engine) as conn:
            row = conn.execute(sa.select(rate_limits).where(
                rate_limits.c.resource == location)).one()
        assert row.burst_max == new_max
    if lowered == "at_window_start":
        assert sum(early.values()) == 0, f"429s {early}; the first batch fits the new max"
    makespan = seconds(max(completed_at(store, loc) for loc in locations) - T0)
    print(f"\n[lowered {lowered}] changed at +{seconds(change['at'] - T0):g} s after "
          f"{change['index']} requests; 429s {early} in the batch already claimed, "
          f"0 after; makespan {makespan:g} s simulated")


def test_budget_spent_elsewhere_is_learned_from_remaining(store, vault, clock, hl,
                                                          make_forwarder):
    """Requests our store did not count (a restarted deployment, a second install on the
    same token) are in HighLevel's count: ``X-RateLimit-Remaining`` must stop us."""
    location, per_location, elsewhere = "loc-shared", 150, 60
    add_locations(vault, clock, location)
    record(store, clock, location, per_location)
    with build_pool(1) as session:
        other = HighLevelClient(session, hl.url)
        for i in range(elsewhere):
            resp = other.mark_viewed(kind="invoice", document_id=f"elsewhere-{i}",
                                     token=token_for(location))
            assert resp.status == 200
    forwarder = make_forwarder()

    drive(forwarder, store, clock)

    assert_each_delivered_once(hl, store, [location], per_location)
    statuses = hl.on_request.statuses()
    assert statuses == {200: per_location + elsewhere}, dict(statuses)
    first_window = [a for a in hl.on_request.of(location) if a.at < T0 + dt.timedelta(
        seconds=INTERVAL)]
    assert len(first_window) == BURST, f"{len(first_window)} requests in the first window"


# -- 3. one location's 429s do not slow the others -----------------------------------------


@pytest.mark.parametrize("too_many", [
    429,  # the fake's 429: X-RateLimit-Remaining 0
    (429, {"statusCode": 429, "message": "Too Many Requests"}),  # its headers show budget left
], ids=["remaining-0", "unexplained"])
def test_a_rate_limited_location_does_not_slow_the_others(store, vault, clock, hl,
                                                          make_forwarder, too_many):
    """Three locations' pace alone, then next to a fourth that answers 429 for a while.

    At a trial token's 25 / 10 s (learned from the first answers), 55 views per location
    take three windows: a pace to compare at a fraction of the requests 100 / 10 s needs.
    An "unexplained" 429 (headers say budget is left: another limit, another app) must
    pause the location by itself, without help from ``X-RateLimit-Remaining: 0``.
    """
    hl.rate_limit_max = trial_max = 25
    per_good, per_bad, scripted = 55, 30, 40
    forwarder = make_forwarder()

    # Baseline: three locations alone.
    baseline = [f"base-{n}" for n in range(3)]
    start_a = clock()
    add_locations(vault, clock, *baseline)
    for location in baseline:
        record(store, clock, location, per_good)
    drive(forwarder, store, clock)
    pace_alone = {loc: seconds(completed_at(store, loc) - start_a) for loc in baseline}

    # The same load on three fresh locations, plus one that answers 429 for a while.
    clock.now = start_b = T0 + dt.timedelta(hours=1)
    good, bad = [f"good-{n}" for n in range(3)], "bad"
    add_locations(vault, clock, *good, bad)
    for location in good:
        record(store, clock, location, per_good)
    record(store, clock, bad, per_bad)
    hl.script(*[too_many] * scripted, token=token_for(bad))
    attempts, paused = set(), set()

    def watch():  # the bad location's state between batches
        attempts.update(r["attempts"] for r in doc_rows(store, bad) if r["status"] == PENDING)
        row = limit_rows(store).get(bad)
        if row and row["paused_until"] and row["paused_until"] > clock():
            paused.add(row["pause_reason"])

    drive(forwarder, store, clock, tick=watch)

    pace_with_bad = {loc: seconds(completed_at(store, loc) - start_b) for loc in good}
    windows = math.ceil(per_good / trial_max)
    assert max(pace_alone.values()) <= (windows - 1) * INTERVAL, pace_alone
    assert max(pace_with_bad.values()) <= max(pace_alone.values()), (
        f"good locations took {pace_with_bad} s next to a 429ing one, {pace_alone} s alone")
    assert_each_delivered_once(hl, store, good, per_good)
    assert_each_delivered_once(hl, store, [bad], per_bad)

    bad_answers = hl.on_request.of(bad)
    limited = [a.at for a in bad_answers if a.status == 429]
    assert len(limited) == scripted
    assert hl.on_request.statuses()[429] == scripted, "429s beyond the scripted ones"
    assert busiest_window(limited) <= CONCURRENCY, (
        f"{busiest_window(limited)} requests in 10 s into a location answering 429")
    first_ok = next(i for i, a in enumerate(bad_answers) if a.status == 200)
    assert all(a.status == 200 for a in bad_answers[first_ok:]), "429s after recovery"
    recovered = bad_answers[first_ok].at
    rows = log_rows(store, bad)
    assert {r["outcome"] for r in rows} == {"rate_limited", "delivered"}
    spent = [r for r in rows if r["attempt"] != 1]
    assert spent == [], f"429s spent retry attempts: {spent[:3]}"
    assert attempts == {0}, f"documents.attempts of the 429ing location's views: {attempts}"
    assert paused, "the 429ing location was never paused"
    print(f"\n[bad neighbour] good locations done in {max(pace_with_bad.values()):g} s "
          f"(alone {max(pace_alone.values()):g} s); bad location: {len(limited)} 429s, "
          f"recovered at +{seconds(recovered - start_b):g} s, done at "
          f"+{seconds(completed_at(store, bad) - start_b):g} s")


# -- 4. an outage loses nothing ------------------------------------------------------------


def test_an_outage_loses_nothing_probes_each_location_and_drains_on_return(
        store, vault, clock, hl, make_forwarder):
    locations = ["loc-x", "loc-y", "loc-z"]
    per_location = 10
    outage = dt.timedelta(seconds=100)
    add_locations(vault, clock, *locations)
    events = [e for loc in locations for e in record(store, clock, loc, per_location)]
    forwarder = make_forwarder()
    hl.set_down(True)

    def tick():
        if clock() >= T0 + outage:
            hl.set_down(False)

    drive(forwarder, store, clock, tick=tick)

    assert_each_delivered_once(hl, store, locations, per_location)
    assert all(store.event_status(e)["status"] == "delivered" for e in events)
    back = T0 + outage
    assert all(a.at >= back for a in hl.on_request.answered if a.status == 200)
    for location in locations:
        rows = log_rows(store, location)
        failed = [r["at"] for r in rows if r["outcome"] == "retry"]
        # The first batch finds the outage out; then one probe at a time, at least 0.5 s
        # apart and at most 4 s: a failing HighLevel never gets the backlog.
        probes = [at for at in failed if at > T0]
        assert len(set(probes)) == len(probes), f"{location}: two sends at once {probes}"
        gaps = [seconds(b - a) for a, b in zip([T0, *probes], probes, strict=False)]
        assert gaps and min(gaps) >= 0.5 and max(gaps) <= 4.0, f"{location}: gaps {gaps}"
        # The first answer after the return releases the backlog: delivered at the
        # limit's pace (10 views fit one window), not each at its own backoff.
        assert completed_at(store, location) - back <= dt.timedelta(seconds=4), location
    delivered_at = max(completed_at(store, loc) for loc in locations)
    print(f"\n[outage] {seconds(outage):g} s down; all delivered at "
          f"+{seconds(delivered_at - back):g} s after the return; "
          f"503s {hl.on_request.statuses()[503]}")


# -- 5. expired views are dead letters that replay brings back -----------------------------


def test_an_expired_view_is_dead_and_replay_delivers_it_once(store, vault, clock, hl,
                                                             make_forwarder, client, services):
    add_locations(vault, clock, "loc-old")
    [event] = record(store, clock, "loc-old", 1)
    forwarder = make_forwarder(max_age_seconds=60)
    hl.set_down(True)

    drive(forwarder, store, clock)

    status = store.event_status(event)
    assert (status["status"], status.get("reason")) == ("failed", "expired"), status
    rows = log_rows(store, "loc-old")
    assert [r["outcome"] for r in rows][-1] == "expired"
    assert seconds(rows[-1]["at"] - T0) >= 60
    [row] = doc_rows(store, "loc-old")
    assert (row["status"], row["dead_reason"]) == ("dead", "expired")
    assert hl.patches() == []

    hl.set_down(False)
    clock.advance(3600)
    resp = client.post("/v1/deliveries/replay", json={"outcome": "expired"},
                       headers=admin_headers())
    assert (resp.status_code, resp.get_json()) == (200, {"replayed": 1}), resp.get_data()
    drive(forwarder, store, clock)

    assert store.event_status(event)["status"] == "delivered"
    assert [p.document_id for p in hl.patches()] == ["loc-old-inv-0"]
    again = client.post("/v1/deliveries/replay", json={"outcome": "expired"},
                        headers=admin_headers())
    assert again.get_json() == {"replayed": 0}
    assert services.store.replay(LogFilter(location_id="loc-old"), now=clock()) == 0
    drive(forwarder, store, clock)
    assert len(hl.patches()) == 1


# -- 6. the daily budget -------------------------------------------------------------------


@pytest.mark.parametrize("answer", [
    (200, None, {"X-RateLimit-Daily-Remaining": "0"}),
    (429, {"statusCode": 429, "message": "Too Many Requests"},
     {"X-RateLimit-Daily-Remaining": "0"}),
], ids=["200", "429"])
def test_a_spent_daily_budget_pauses_the_location_until_midnight_utc(
        store, vault, clock, hl, make_forwarder, answer):
    spent, other = "loc-spent", "loc-other"
    add_locations(vault, clock, spent, other)
    forwarder = make_forwarder()
    hl.script(answer, token=token_for(spent))
    record(store, clock, spent, 1)
    assert forwarder.forward_once(now=clock()) == 1
    row = limit_rows(store)[spent]
    assert (row["paused_until"], row["pause_reason"]) == (MIDNIGHT, "daily"), row

    # More views, now and six hours later: the other location's go out at once.
    for n, hours in enumerate((0, 6)):
        clock.now = T0 + dt.timedelta(hours=hours, seconds=1)
        record(store, clock, spent, 5, start=1 + 5 * n)
        record(store, clock, other, 5, start=5 * n)
        drive(forwarder, store, clock, until=lambda: pending(store, other) == 0)
        assert completed_at(store, other) == clock()
    before = [a for a in hl.on_request.of(spent) if a.at < MIDNIGHT]
    assert len(before) == 1, f"{len(before)} requests for the paused location before midnight"

    drive(forwarder, store, clock)

    after = hl.on_request.of(spent)[1:]
    assert after and all(a.at >= MIDNIGHT for a in after), [a.at for a in after]
    assert all(a.status == 200 for a in after)
    delivered = {r["document_id"] for r in log_rows(store, spent) if r["outcome"] == "delivered"}
    assert delivered == {f"{spent}-inv-{i}" for i in range(11)}
    assert all(r["attempt"] == 1 for r in log_rows(store, spent))
    assert completed_at(store, spent) == MIDNIGHT



