"""Per-resource rate limits shared by every forwarder through the store.

HighLevel allows 100 requests per 10 s and 200,000 per day per app per resource (the
location, or the company for an agency token), less for some tokens, and says so in
``X-RateLimit-*`` headers. The limiter starts from ``RATE_LIMIT_BURST`` /
``RATE_LIMIT_DAILY``, learns the real limits from every answer, and counts our own sends
(``budget``: in flight, or answered within the last interval), so a resource sends again
as soon as a send of the last interval ages out, not a whole window later. A resource
that only fails for transient reasons is probed with one send at a time; its first
answer releases its backed-off documents (``observe_batch`` says which resources
recovered). Claims skip paused resources, so one busy location never delays another.

The arithmetic is pure (``budget``: ``reserve``, ``learn`` on a ``LimitState``); the
``StoreLimiter`` loads and saves states under a row lock inside the caller's
transaction. If the store is unreachable the forwarder cannot claim anything either,
so the limiter has no separate failure mode: it fails closed with the claim.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

import sqlalchemy as sa

from ..highlevel.client import RateLimit
from .budget import (
    IN_FLIGHT_HOLD,
    MAX_PAUSE,
    LimitState,
    answered,
    dump_sends,
    learn,
    load_sends,
    observe_health,
    reserve,
    reserved_at,
    roll,
)
from .db import rate_limits
from .engine import dialect_insert

__all__ = ["MAX_PAUSE", "LimitState", "NoLimit", "StoreLimiter", "learn", "reserve", "roll"]


class NoLimit:
    """The limiter that never limits (tests of other logic, a private HighLevel stand-in)."""

    def reserve_many(self, conn, wants: dict[str, int], *, now: dt.datetime,
                     token: str | None = None) -> dict[str, int]:
        return dict(wants)

    def paused_resources(self, now: dt.datetime):
        return None

    def resumes_at(self, conn, now: dt.datetime) -> dt.datetime | None:
        return None

    def observe_batch(self, conn, results: Sequence, *, now: dt.datetime) -> set[str]:
        return set()


class StoreLimiter:
    """Limit states kept in the ``rate_limits`` table, locked per resource while changed.

    Statements are built once; each batch loads every resource it touches in one
    query and saves them in one executemany.
    """

    def __init__(self, dialect: str, *, burst: tuple[int, float] = (100, 10.0),
                 daily: int = 200_000, hold: dt.timedelta = IN_FLIGHT_HOLD):
        self.dialect = dialect
        self.burst_max, self.interval = burst[0], dt.timedelta(seconds=burst[1])
        self.daily = daily
        self.hold = hold  # how long an unanswered send (and a probe) counts as in flight
        self._known: set[str] = set()  # resources whose row this process has seen
        r = rate_limits.c
        self._insert = dialect_insert(rate_limits, dialect).on_conflict_do_nothing()
        self._select = sa.select(rate_limits).where(
            r.resource.in_(sa.bindparam("resources", expanding=True))).order_by(r.resource)
        if dialect == "postgresql":
            self._select = self._select.with_for_update()
        self._update = rate_limits.update().where(
            r.resource == sa.bindparam("b_resource")).values(
            {name: sa.bindparam(f"b_{name}") for name in _SAVED})

    def paused_resources(self, now: dt.datetime):
        """A subquery of resources paused at ``now`` (claims skip their documents)."""
        r = rate_limits.c
        return sa.select(r.resource).where(r.paused_until > now)

    def resumes_at(self, conn, now: dt.datetime) -> dt.datetime | None:
        """When the first pause still on at ``now`` ends (None: none is on)."""
        r = rate_limits.c
        return conn.execute(sa.select(sa.func.min(r.paused_until))
                            .where(r.paused_until > now)).scalar()

    def _load(self, conn, resources: Iterable[str], now: dt.datetime) -> dict[str, LimitState]:
        """Every resource's state, its row locked. A resource this process has not seen
        gets its row first (insert, then lock everything in one sorted order, as before);
        once every resource is known that is one statement, not two."""
        resources = sorted(set(resources))  # one lock order everywhere: no deadlocks
        unknown = [res for res in resources if res not in self._known]
        if unknown:
            self._create(conn, unknown, now)
        states = self._read(conn, resources)
        missing = [res for res in resources if res not in states]
        if missing:  # purged since this process saw it (retention.purge_location)
            self._create(conn, missing, now)
            states.update(self._read(conn, missing))
        self._known.update(resources)
        return states

    def _create(self, conn, resources: list[str], now: dt.datetime) -> None:
        conn.execute(self._insert, [
            {"resource": res, "burst_max": self.burst_max,
             "interval_ms": int(self.interval.total_seconds() * 1000),
             "daily_max": self.daily, "used": 0, "daily_used": 0, "failures": 0,
             "updated_at": now}
            for res in resources])

    def _read(self, conn, resources: list[str]) -> dict[str, LimitState]:
        states = {}
        for row in conn.execute(self._select, {"resources": resources}):
            states[row.resource] = state = LimitState(
                resource=row.resource, burst_max=row.burst_max,
                interval=dt.timedelta(milliseconds=row.interval_ms), daily_max=row.daily_max,
                used=row.used, window_ends_at=row.window_ends_at, daily_used=row.daily_used,
                day_ends_at=row.day_ends_at, paused_until=row.paused_until,
                pause_reason=row.pause_reason, failures=row.failures)
            load_sends(state, row.sends)
        return states

    def _save(self, conn, states: Iterable[LimitState], now: dt.datetime) -> None:
        rows = [{
            "b_resource": st.resource, "b_burst_max": st.burst_max,
            "b_interval_ms": int(st.interval.total_seconds() * 1000),
            "b_daily_max": st.daily_max, "b_used": st.used,
            "b_window_ends_at": st.window_ends_at, "b_daily_used": st.daily_used,
            "b_day_ends_at": st.day_ends_at, "b_paused_until": st.paused_until,
            "b_pause_reason": st.pause_reason, "b_sends": dump_sends(st),
            "b_failures": st.failures, "b_updated_at": now} for st in states]
        if rows:
            conn.execute(self._update, rows)

    def reserve_many(self, conn, wants: dict[str, int], *, now: dt.datetime,
                     token: str | None = None) -> dict[str, int]:
        """Reserve budget for several resources in the caller's transaction; the sends
        count as in flight under ``token`` (the claim's lease) until observed."""
        if not wants:
            return {}
        token = (token or secrets.token_hex(4))[:8]
        states = self._load(conn, wants, now)
        granted = {res: reserve(state, wants[res], now, token=token, hold=self.hold)
                   for res, state in states.items()}
        self._save(conn, states.values(), now)
        return granted

    def observe_batch(self, conn, results: Sequence, *, now: dt.datetime) -> set[str]:
        """Learn from a batch of ``(claim, outcome)`` pairs, per resource, with one read
        and one write; return the resources that recovered from failing."""
        if not results:
            return set()
        found: dict[str, list] = defaultdict(list)
        sent: dict[str, Counter] = defaultdict(Counter)  # resource -> (lease, answer) -> n
        for claim, outcome in results:
            found[claim.location_id].append(outcome)
            sent[claim.location_id][claim.lease_token[:8], outcome.answered_at or now] += 1
        states = self._load(conn, found, now)
        recovered = set()
        for res, outcomes in found.items():
            state = states[res]
            roll(state, now)
            reserved = [reserved_at(state, token, self.hold) for token, _ in sent[res]]
            for (token, at), n in sent[res].items():
                answered(state, token, n, now, at=at)
            # Concurrent answers arrive in no known order: the batch's lowest figures win,
            # so a limit HighLevel just lowered is not overwritten by an older one.
            rate = _lowest([o.rate_limit for o in outcomes])
            if rate != _NOTHING:
                since = None if None in reserved else min(reserved, default=None)
                learn(state, rate, status=None, now=now, sent_since=since,
                      own=sum(sent[res].values()))
            for o in outcomes:
                if o.http_status == 429:
                    learn(state, o.rate_limit, status=429, now=now, retry_after=o.retry_after)
            if observe_health(state, outcomes, now):
                recovered.add(res)
        self._save(conn, states.values(), now)
        return recovered

    def describe(self, conn, resource: str) -> dict | None:
        """The resource's current limits and pause, for the admin API."""
        row = conn.execute(sa.select(rate_limits).where(
            rate_limits.c.resource == resource)).first()
        if row is None:
            return None
        return {"burstMax": row.burst_max, "intervalMs": row.interval_ms,
                "dailyMax": row.daily_max, "used": row.used, "dailyUsed": row.daily_used,
                "pausedUntil": row.paused_until, "pauseReason": row.pause_reason,
                "failures": row.failures}


_SAVED = ("burst_max", "interval_ms", "daily_max", "used", "window_ends_at", "daily_used",
          "day_ends_at", "paused_until", "pause_reason", "sends", "failures", "updated_at")


_NOTHING = RateLimit()


def _lowest(rates: list[RateLimit]) -> RateLimit:
    """One batch's headers in one: each figure's lowest (the interval of the lowest max)."""
    def low(name):
        values = [getattr(r, name) for r in rates if getattr(r, name) is not None]
        return min(values) if values else None

    maxed = [r for r in rates if r.max is not None and r.interval_ms is not None]
    interval = min(maxed, key=lambda r: r.max).interval_ms if maxed else low("interval_ms")
    return RateLimit(max=low("max"), remaining=low("remaining"), interval_ms=interval,
                     daily_limit=low("daily_limit"), daily_remaining=low("daily_remaining"))
