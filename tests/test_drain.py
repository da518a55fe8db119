"""Draining at HighLevel's pace, and recovering from an outage: the budget counted from our
own sends, one probe per failing location, its first answer releasing the backed-off
documents. Through the store (both stores) and the forwarder, with a hand-moved clock."""

from __future__ import annotations

import datetime as dt
import random

import pytest
import sqlalchemy as sa

from service.forward.forwarder import Forwarder
from service.highlevel.client import RateLimit, Response
from service.store.budget import LimitState, answered, reserve
from service.store.db import documents, rate_limits
from service.store.queue import Outcome, Store
from service.store.ratelimit import StoreLimiter

from .conftest import T0, make_view
from .fakes import FakeHighLevelClient, InlineExecutor

S = dt.timedelta(seconds=1)


class OutageClient(FakeHighLevelClient):
    """The scriptable fake, answering 503 to every call with a token in ``down``."""

    def __init__(self) -> None:
        super().__init__()
        self.down: set[str] = set()

    def mark_viewed(self, *, kind: str, document_id: str, token: str) -> Response:
        if token in self.down:
            super().mark_viewed(kind=kind, document_id=document_id, token="-")  # recorded
            return Response(503, message="Service Unavailable")
        return super().mark_viewed(kind=kind, document_id=document_id, token=token)


@pytest.fixture
def hl():
    return OutageClient()


@pytest.fixture
def limited(services):
    """A store whose limiter starts at 10 sends per 10 s per location."""
    return Store(services.engine, limiter=StoreLimiter(services.engine.dialect.name,
                                                       burst=(10, 10.0)))


@pytest.fixture
def make_forwarder(limited, vault, hl, clock):
    def make(**overrides) -> Forwarder:
        settings = {"executor": InlineExecutor(), "clock": clock, "rand": lambda: 1.0,
                    "concurrency": 16}
        settings.update(overrides)
        return Forwarder(limited, vault, hl, **settings)

    vault.set_token("loc_1", access_token="tok-loc-1-secret", now=T0)
    vault.set_token("loc_2", access_token="tok-loc-2-secret", now=T0)
    return make


def views(store, clock, location_id: str, count: int, prefix: str = "inv") -> None:
    store.record_views([make_view(clock(), location_id=location_id,
                                  document_id=f"{prefix}_{location_id}_{n}")
                        for n in range(count)], now=clock())


def sent(hl, since: int = 0) -> int:
    return len(hl.calls) - since


def due_at(store, document_id: str) -> dt.datetime:
    with store.engine.connect() as conn:
        return conn.execute(sa.select(documents.c.due_at).where(
            documents.c.document_id == document_id)).scalar_one()


# -- the budget: safe whatever HighLevel's windows, and not timid --------------------------


@pytest.mark.parametrize("seed", range(6))
def test_no_window_of_highlevel_ever_holds_more_than_the_limit(seed):
    """Forwarders claim at random moments; sends reach HighLevel after a random delay,
    answer after another, and are recorded later still. Every span of one interval
    (so every fixed window, wherever it starts) holds at most the limit, and the budget
    is used: a window's worth goes out about once per interval plus the delays."""
    rng = random.Random(seed)
    st = LimitState(resource="loc", burst_max=10, interval=S, daily_max=10**6)
    now, received, records = T0, [], []
    for step in range(3000):
        now += dt.timedelta(seconds=rng.uniform(0, 0.02))
        for at, token, n in sorted(r for r in records if r[0] <= now):
            answered(st, token, n, at)
        records = [r for r in records if r[0] > now]
        token = f"lease{step}"
        granted = reserve(st, rng.randint(1, 6), now, token=token)
        if granted:
            arrivals = [now + dt.timedelta(seconds=rng.uniform(0, 0.1)) for _ in range(granted)]
            answers = [a + dt.timedelta(seconds=rng.uniform(0, 0.15)) for a in arrivals]
            records.append((max(answers) + dt.timedelta(seconds=rng.uniform(0, 0.05)),
                            token, granted))
            received += arrivals
    received.sort()
    busiest = max(sum(1 for r in received[i:i + 40] if r - first < S)
                  for i, first in enumerate(received))
    assert busiest == 10
    seconds = (received[-1] - received[0]) / S
    assert len(received) >= 10 * seconds / 1.3  # at worst 0.3 s of delays per window


def test_a_location_sends_again_one_interval_after_its_answers(limited, make_forwarder,
                                                              hl, clock):
    views(limited, clock, "loc_1", 25)
    forwarder = make_forwarder()
    assert forwarder.forward_once(now=clock()) == 10
    clock.advance(9.9)
    assert forwarder.forward_once(now=clock()) == 0
    clock.advance(0.1)  # answered (and recorded) at T0: counted until T0 + 10 s
    assert forwarder.forward_once(now=clock()) == 10
    clock.advance(10)
    assert forwarder.forward_once(now=clock()) == 5
    assert sent(hl) == 25
    assert limited.queue_depth() == {"idle": 25}


def test_an_idle_forwarder_wakes_when_the_window_opens_or_a_document_comes_due(
        limited, make_forwarder, hl, clock):
    views(limited, clock, "loc_1", 12)
    forwarder = make_forwarder()
    assert forwarder.idle_wait(0.25) == 0.25  # nothing paused, nothing due later
    assert forwarder.forward_once(now=clock()) == 10
    clock.advance(9.9)
    assert forwarder.forward_once(now=clock()) == 0  # paused until T0 + 10 s
    assert forwarder.idle_wait(0.25) == pytest.approx(0.1, abs=0.003)
    assert forwarder.idle_wait(0.05) == 0.05  # never longer than the back-off
    clock.advance(0.1)
    assert forwarder.forward_once(now=clock()) == 2
    hl.script(Response(503, message="Service Unavailable"))
    views(limited, clock, "loc_2", 1)
    assert forwarder.forward_once(now=clock()) == 1
    # Retried one back-off later; before that, loc_2's probe pause ends.
    retry = due_at(limited, "inv_loc_2_0")
    with limited.engine.connect() as conn:
        probe = conn.execute(sa.select(rate_limits.c.paused_until).where(
            rate_limits.c.resource == "loc_2")).scalar_one()
    assert clock() < probe < retry
    clock.advance(0.01)
    assert forwarder.idle_wait(60.0) == pytest.approx(
        (probe - clock()).total_seconds(), abs=0.003)
    clock.advance((probe - clock()).total_seconds())
    assert forwarder.idle_wait(60.0) == pytest.approx(
        (retry - clock()).total_seconds(), abs=0.003)


def test_two_forwarders_share_one_budget(limited, make_forwarder, hl, clock):
    views(limited, clock, "loc_1", 30)
    one, two = make_forwarder(concurrency=6), make_forwarder(concurrency=6)
    assert [one.forward_once(now=clock()), two.forward_once(now=clock())] == [6, 4]
    assert [two.forward_once(now=clock()), one.forward_once(now=clock())] == [0, 0]
    clock.advance(10)
    assert [two.forward_once(now=clock()), one.forward_once(now=clock())] == [6, 4]
    assert sent(hl) == 20


def test_a_remaining_lower_than_our_count_is_believed(limited, make_forwarder, hl, clock):
    """Sends we did not make (HighLevel counts them) take budget until one interval later."""
    views(limited, clock, "loc_1", 12)
    hl.script(Response(200, rate_limit=RateLimit(max=10, remaining=2, interval_ms=10_000)))
    forwarder = make_forwarder(concurrency=1)
    assert forwarder.forward_once(now=clock()) == 1
    assert [forwarder.forward_once(now=clock()) for _ in range(3)] == [1, 1, 0]
    clock.advance(10)
    assert forwarder.forward_once(now=clock()) == 1


def test_a_new_windows_remaining_figure_releases_the_rest_at_once(limited, make_forwarder,
                                                                 hl, clock):
    """A location that spent its window sends again when the log allows one send; when
    that answer says HighLevel's new window has 9 left, the 9 go in the next batch
    instead of waiting for the old window's answers to age out (through the store, and
    kept there: a second forwarder sees the same room)."""
    views(limited, clock, "loc_1", 30)
    forwarder = make_forwarder(concurrency=1)
    window = []
    for _ in range(10):  # 10 sends, one every 0.5 s: answered from T0 to T0 + 4.5 s
        window.append(forwarder.forward_once(now=clock()))
        clock.advance(0.5)
    assert window == [1] * 10 and forwarder.forward_once(now=clock()) == 0
    clock.advance(5)  # T0 + 10: the first answer ages out, one send allowed by the log
    hl.script(Response(200, rate_limit=RateLimit(max=10, remaining=9, interval_ms=10_000)))
    assert forwarder.forward_once(now=clock()) == 1
    other = make_forwarder(concurrency=16)
    assert other.forward_once(now=clock()) == 9  # the log alone would allow none yet
    assert other.forward_once(now=clock()) == 0
    assert sent(hl) == 20


# -- outages: one probe per location, released by its first answer ------------------------


def test_a_failing_location_is_probed_with_one_send_at_a_time(limited, make_forwarder,
                                                             hl, clock):
    views(limited, clock, "loc_1", 3)  # (failed sends count against the budget too)
    views(limited, clock, "loc_2", 2)
    hl.down = {"tok-loc-1-secret"}
    forwarder = make_forwarder()
    assert forwarder.forward_once(now=clock()) == 5  # the outage is found out
    calls = sent(hl)
    clock.advance(2)  # every document's own backoff (rand=1.0: 2 s) has ended
    assert forwarder.forward_once(now=clock()) == 1  # loc_1's probe; loc_2 is done
    clock.advance(0.5)
    assert forwarder.forward_once(now=clock()) == 0  # failing recently: the backlog waits
    for wait in (0.5, 2, 4, 4):  # the probe's pace: 0.5 s, doubling, at most 4 s
        clock.advance(wait - 0.01)
        assert forwarder.forward_once(now=clock()) == 0
        clock.advance(0.01)
        assert forwarder.forward_once(now=clock()) == 1
    assert sent(hl, calls) == 5
    assert limited.queue_depth() == {"idle": 2, "pending": 3}


def test_the_probe_holds_its_location_for_every_forwarder(limited, make_forwarder, hl,
                                                          clock):
    views(limited, clock, "loc_1", 5)
    hl.down = {"tok-loc-1-secret"}
    make_forwarder().forward_once(now=clock())
    clock.advance(2)
    [probe] = limited.claim_due(now=clock(), limit=10)  # one forwarder's probe, in flight
    assert limited.claim_due(now=clock(), limit=10) == []  # another forwarder: nothing
    clock.advance(1)
    limited.record_outcomes([(probe, Outcome("retry", "retry", http_status=503,
                                             next_due=clock() + 60 * S))], now=clock())
    assert limited.claim_due(now=clock(), limit=10) == []  # failing recently
    clock.advance(1)
    assert len(limited.claim_due(now=clock(), limit=10)) == 1


def test_the_first_answer_releases_the_locations_backed_off_documents(limited, make_forwarder,
                                                                     hl, clock):
    views(limited, clock, "loc_1", 1, prefix="quiet")  # delivered, then viewed again: waits
    forwarder = make_forwarder()
    forwarder.forward_once(now=clock())
    views(limited, clock, "loc_1", 1, prefix="quiet")
    assert due_at(limited, "quiet_loc_1_0") == T0 + 60 * S  # the coalescing window
    views(limited, clock, "loc_1", 6)
    views(limited, clock, "loc_2", 2)
    hl.down = {"tok-loc-1-secret", "tok-loc-2-secret"}
    for _ in range(10):  # a long outage: each document's own backoff grows
        clock.advance(4)
        forwarder.forward_once(now=clock())
    backed_off = [due_at(limited, f"inv_loc_1_{n}") for n in range(6)]
    assert max(backed_off) > clock() + 4 * S
    loc_2_due = due_at(limited, "inv_loc_2_0"), due_at(limited, "inv_loc_2_1")

    hl.down = {"tok-loc-2-secret"}  # loc_1's HighLevel answers again; loc_2's does not
    clock.advance(4)
    calls = len(hl.calls)
    while forwarder.forward_once(now=clock()):
        pass
    now_sent = [call.document_id for call in hl.calls[calls:]]
    assert sorted(d for d in now_sent if d.startswith("inv_loc_1")) == [
        f"inv_loc_1_{n}" for n in range(6)]  # loc_1's backlog at once, its backoff or not
    assert len([d for d in now_sent if d.startswith("inv_loc_2")]) <= 1  # a probe at most
    with limited.engine.connect() as conn:
        statuses = dict(conn.execute(sa.select(documents.c.document_id, documents.c.status)).all())
    assert {doc: statuses[doc] for doc in statuses if doc.startswith("inv_loc_1")} == {
        f"inv_loc_1_{n}": "idle" for n in range(6)}
    assert due_at(limited, "quiet_loc_1_0") == T0 + 60 * S  # not an outage's backlog
    assert max(due_at(limited, "inv_loc_2_0"), due_at(limited, "inv_loc_2_1")) >= max(loc_2_due)


def test_a_view_that_expires_does_not_make_its_location_failing(limited, make_forwarder, hl,
                                                                clock):
    views(limited, clock, "loc_1", 2)
    [first, second] = limited.claim_due(now=clock(), limit=1) + limited.claim_due(
        now=clock(), limit=1)
    limited.record_outcomes([(first, Outcome("dead", "expired", http_status=503))],
                            now=clock())
    limited.release([second], now=clock())
    assert [c.document_id for c in limited.claim_due(now=clock(), limit=10)] == [
        second.document_id]  # not held back as a probe would be
