"""Per-resource rate limits shared by every forwarder through the store.

HighLevel allows 100 requests per 10 s and 200,000 per day per app per resource (the
location, or the company for an agency token), less for some tokens, and says so in
``X-RateLimit-*`` headers. The limiter starts from ``RATE_LIMIT_BURST`` /
``RATE_LIMIT_DAILY``, learns the real limits and the remaining budget from every
answer, and pauses a resource whose budget is spent until its window (or day) ends.
Claims skip paused resources, so one busy location never delays another.

The window arithmetic is pure (``reserve``, ``learn`` on a ``LimitState``); the
``StoreLimiter`` loads and saves states under a row lock inside the caller's
transaction. If the store is unreachable the forwarder cannot claim anything either,
so the limiter has no separate failure mode: it fails closed with the claim.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable

import sqlalchemy as sa

from ..highlevel.client import RateLimit
from .db import rate_limits
from .engine import dialect_insert

MAX_PAUSE = dt.timedelta(minutes=10)  # a Retry-After is honoured up to this


@dataclasses.dataclass
class LimitState:
    resource: str
    burst_max: int
    interval: dt.timedelta
    daily_max: int
    used: int = 0
    window_ends_at: dt.datetime | None = None
    daily_used: int = 0
    day_ends_at: dt.datetime | None = None
    paused_until: dt.datetime | None = None
    pause_reason: str | None = None


def _next_midnight(now: dt.datetime) -> dt.datetime:
    return dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), dt.UTC)


def _pause(state: LimitState, until: dt.datetime, reason: str) -> None:
    if state.paused_until is None or until > state.paused_until:
        state.paused_until, state.pause_reason = until, reason


def roll(state: LimitState, now: dt.datetime) -> None:
    """Start a new burst window or day when the current one has ended."""
    if state.window_ends_at is None or now >= state.window_ends_at:
        state.used, state.window_ends_at = 0, now + state.interval
    if state.day_ends_at is None or now >= state.day_ends_at:
        state.daily_used, state.day_ends_at = 0, _next_midnight(now)
    if state.paused_until is not None and now >= state.paused_until:
        state.paused_until = state.pause_reason = None


def reserve(state: LimitState, want: int, now: dt.datetime) -> int:
    """Take up to ``want`` sends from the budget; pause the resource when it runs out."""
    roll(state, now)
    if state.paused_until is not None:
        return 0
    granted = max(0, min(want, state.burst_max - state.used, state.daily_max - state.daily_used))
    state.used += granted
    state.daily_used += granted
    if state.daily_used >= state.daily_max:
        _pause(state, state.day_ends_at, "daily")
    elif state.used >= state.burst_max:
        _pause(state, state.window_ends_at, "burst")
    return granted


def learn(state: LimitState, rate: RateLimit, *, status: int | None, now: dt.datetime,
          retry_after: float | None = None) -> None:
    """Correct the state from one HighLevel answer (its headers, a 429)."""
    roll(state, now)
    if rate.interval_ms and rate.interval_ms > 0:
        state.interval = dt.timedelta(milliseconds=rate.interval_ms)
    if rate.max and rate.max > 0:
        state.burst_max = rate.max
    if rate.daily_limit and rate.daily_limit > 0:
        state.daily_max = rate.daily_limit
    if rate.remaining is not None:
        # HighLevel's count is the truth; ours may lag (other apps' traffic, restarts).
        state.used = max(state.used, state.burst_max - rate.remaining)
        if rate.remaining <= 0:
            # We do not know where HighLevel's window started: wait a whole one.
            _pause(state, now + state.interval, "burst")
    if rate.daily_remaining is not None:
        state.daily_used = max(state.daily_used, state.daily_max - rate.daily_remaining)
        if rate.daily_remaining <= 0:
            _pause(state, state.day_ends_at, "daily")
    if status == 429:
        wait = state.interval if retry_after is None else dt.timedelta(seconds=retry_after)
        _pause(state, now + min(max(wait, dt.timedelta(seconds=1)), MAX_PAUSE), "429")


class NoLimit:
    """The limiter that never limits (tests of other logic, a private HighLevel stand-in)."""

    def reserve_many(self, conn, wants: dict[str, int], *, now: dt.datetime) -> dict[str, int]:
        return dict(wants)

    def paused_resources(self, now: dt.datetime):
        return None

    def observe_batch(self, conn, outcomes: dict[str, list], *, now: dt.datetime) -> None:
        return None


class StoreLimiter:
    """Limit states kept in the ``rate_limits`` table, locked per resource while changed.

    Statements are built once; each batch loads every resource it touches in one
    query and saves them in one executemany.
    """

    def __init__(self, dialect: str, *, burst: tuple[int, float] = (100, 10.0),
                 daily: int = 200_000):
        self.dialect = dialect
        self.burst_max, self.interval = burst[0], dt.timedelta(seconds=burst[1])
        self.daily = daily
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

    def _load(self, conn, resources: Iterable[str], now: dt.datetime) -> dict[str, LimitState]:
        resources = sorted(set(resources))  # one lock order everywhere: no deadlocks
        conn.execute(self._insert, [
            {"resource": res, "burst_max": self.burst_max,
             "interval_ms": int(self.interval.total_seconds() * 1000),
             "daily_max": self.daily, "used": 0, "daily_used": 0, "updated_at": now}
            for res in resources])
        states = {}
        for row in conn.execute(self._select, {"resources": resources}):
            states[row.resource] = LimitState(
                resource=row.resource, burst_max=row.burst_max,
                interval=dt.timedelta(milliseconds=row.interval_ms), daily_max=row.daily_max,
                used=row.used, window_ends_at=row.window_ends_at, daily_used=row.daily_used,
                day_ends_at=row.day_ends_at, paused_until=row.paused_until,
                pause_reason=row.pause_reason)
        return states

    def _save(self, conn, states: Iterable[LimitState], now: dt.datetime) -> None:
        rows = [{
            "b_resource": st.resource, "b_burst_max": st.burst_max,
            "b_interval_ms": int(st.interval.total_seconds() * 1000),
            "b_daily_max": st.daily_max, "b_used": st.used,
            "b_window_ends_at": st.window_ends_at, "b_daily_used": st.daily_used,
            "b_day_ends_at": st.day_ends_at, "b_paused_until": st.paused_until,
            "b_pause_reason": st.pause_reason, "b_updated_at": now} for st in states]
        if rows:
            conn.execute(self._update, rows)

    def reserve_many(self, conn, wants: dict[str, int], *, now: dt.datetime) -> dict[str, int]:
        """Reserve budget for several resources in the caller's transaction."""
        if not wants:
            return {}
        states = self._load(conn, wants, now)
        granted = {res: reserve(state, wants[res], now) for res, state in states.items()}
        self._save(conn, states.values(), now)
        return granted

    def observe_batch(self, conn, outcomes: dict[str, list], *, now: dt.datetime) -> None:
        """Learn from a batch's answers, per resource, with one read and one write."""
        informative = {res: [o for o in found if _informative(o)]
                       for res, found in outcomes.items()}
        informative = {res: found for res, found in informative.items() if found}
        if not informative:
            return
        states = self._load(conn, informative, now)
        for res, found in informative.items():
            # Concurrent answers arrive in no known order: learn the lowest limit last,
            # so a limit HighLevel just lowered is not overwritten by an older one.
            found.sort(key=lambda o: -(o.rate_limit.max or float("inf")))
            for o in found:
                learn(states[res], o.rate_limit, status=o.http_status, now=now,
                      retry_after=o.retry_after)
        self._save(conn, states.values(), now)

    def describe(self, conn, resource: str) -> dict | None:
        """The resource's current limits and pause, for the admin API."""
        row = conn.execute(sa.select(rate_limits).where(
            rate_limits.c.resource == resource)).first()
        if row is None:
            return None
        return {"burstMax": row.burst_max, "intervalMs": row.interval_ms,
                "dailyMax": row.daily_max, "used": row.used, "dailyUsed": row.daily_used,
                "pausedUntil": row.paused_until, "pauseReason": row.pause_reason}


_SAVED = ("burst_max", "interval_ms", "daily_max", "used", "window_ends_at", "daily_used",
          "day_ends_at", "paused_until", "pause_reason", "updated_at")


def _informative(outcome) -> bool:
    rate = outcome.rate_limit
    return outcome.http_status == 429 or rate.max is not None or rate.remaining is not None \
        or rate.interval_ms is not None or rate.daily_limit is not None \
        or rate.daily_remaining is not None
