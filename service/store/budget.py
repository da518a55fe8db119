"""A resource's rate-limit budget and health, as pure arithmetic on a ``LimitState``.

The budget is a log of our own sends, not a guess at HighLevel's window. A send counts
while it is in flight, and for one interval after its answer was recorded. A new send
is allowed while fewer than ``burst_max`` are counted. This holds whichever way
HighLevel places its windows. Take any window [s, s + I) and the last send it
received. That send was reserved at some t <= its receipt < s + I. Every other send
the window received got there at or after s > t - I. So when the last one was
reserved, each of the others was either in flight or answered after t - I, and was
counted. The window therefore never holds more than ``burst_max``, with no guard
time and no knowledge of its edges. The cost is one latency per window: a send is
counted from its answer, not from its receipt. ``X-RateLimit-Remaining`` lower than
our own count (sends we do not know of) adds those sends to the log, as answered now.

What HighLevel says remains is a second, independent bound. An answer's
``X-RateLimit-Remaining`` R counts every send HighLevel received up to that request, so
R less every send it may not have counted (those in flight or answered since the
request's batch was reserved, and every one reserved after the answer) is a number of
sends the window can still take. That stays true later, whichever way the windows are
placed: a fixed window only resets, a sliding one only forgets, a bucket only refills.
So a resource whose log is full may still send that many (``allowance``): when HighLevel
starts a new window, the first answers from it release the rest of its budget at once,
instead of one interval after each of the old window's answers.

Health: a batch in which a resource only failed for transient reasons (5xx, 408,
timeouts, connection errors) makes it *failing*. A failing resource waits
(``probe_delay``), then gets one send, the probe. Its other documents wait until the
probe answers. The first answer from HighLevel ends the failure: ``observe`` returns
True, and the caller releases the backed-off documents.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
import json

from ..highlevel.client import RateLimit

MAX_PAUSE = dt.timedelta(minutes=10)  # a Retry-After is honoured up to this
# An unanswered send counts as in flight this long (HighLevel's connect and read timeouts
# are 5 + 10 s; a forwarder that died leaves its sends counted this long, then one
# interval more): also how long a probe holds its location.
IN_FLIGHT_HOLD = dt.timedelta(seconds=30)
PROBE_BASE, PROBE_CAP = dt.timedelta(seconds=0.5), dt.timedelta(seconds=4)
BURST, DAILY, LIMITED, PROBE, FAILING = "burst", "daily", "429", "probe", "failing"
_MS = dt.timedelta(milliseconds=1)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_BUCKET_MS = 50  # answers are logged rounded up to this: fewer entries, never early


@dataclasses.dataclass
class LimitState:
    resource: str
    burst_max: int
    interval: dt.timedelta
    daily_max: int
    used: int = 0  # sends counted at the last change (shown to operators)
    window_ends_at: dt.datetime | None = None  # when the count next drops
    daily_used: int = 0
    day_ends_at: dt.datetime | None = None
    paused_until: dt.datetime | None = None
    pause_reason: str | None = None
    # lease token -> [sends in flight, counted until (epoch ms)]
    in_flight: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    answered: list[list[int]] = dataclasses.field(default_factory=list)  # [[epoch ms, n]]
    failures: int = 0  # batches in a row that only failed transiently (0: healthy)
    reserved_total: int = 0  # sends ever reserved (what came after an allowance)
    # What HighLevel said remains, less what it may not have counted: [sends, reserved_total
    # when it was learned] (module docstring); None: no such figure.
    allowed: list[int] | None = None


def _ms(at: dt.datetime) -> int:
    return -(-(at - _EPOCH) // _MS)  # rounded up


def _at(ms: int) -> dt.datetime:
    return _EPOCH + ms * _MS


def dump_sends(state: LimitState) -> str | None:
    """The send log as stored (``rate_limits.sends``), with the allowance."""
    if not state.in_flight and not state.answered and not state.reserved_total:
        return None
    data = {"f": state.in_flight, "a": state.answered, "t": state.reserved_total}
    if state.allowed is not None:
        data["r"] = state.allowed
    return json.dumps(data, separators=(",", ":"))


def load_sends(state: LimitState, text: str | None) -> None:
    """Fill the state's send log from its stored text."""
    data = json.loads(text) if text else {}
    state.in_flight = {k: list(v) for k, v in data.get("f", {}).items()}
    state.answered = [list(e) for e in data.get("a", [])]
    state.reserved_total = data.get("t", 0)
    state.allowed = data.get("r")


def allowance(state: LimitState) -> int:
    """Sends HighLevel's last figure still allows (0 without one)."""
    if state.allowed is None:
        return 0
    sends, at = state.allowed
    return max(0, sends - (state.reserved_total - at))


def _add_answered(state: LimitState, at: dt.datetime, n: int) -> None:
    """Log ``n`` answers at ``at``, in its bucket (rounded up: never early), in order."""
    ms = -(-_ms(at) // _BUCKET_MS) * _BUCKET_MS
    i = bisect.bisect_left(state.answered, [ms])
    if i < len(state.answered) and state.answered[i][0] == ms:
        state.answered[i][1] += n
    else:
        state.answered.insert(i, [ms, n])


def counted(state: LimitState, now: dt.datetime) -> int:
    """Sends counted at ``now``; ends expired holds and forgets answers an interval old."""
    now_ms, interval_ms = _ms(now), state.interval // _MS
    for token, (n, until) in list(state.in_flight.items()):
        if until <= now_ms:  # never answered: counted as answered when its hold ended
            del state.in_flight[token]
            state.answered.append([until, n])
    state.answered.sort()
    state.answered = [e for e in state.answered if e[0] > now_ms - interval_ms and e[1] > 0]
    return sum(n for n, _ in state.in_flight.values()) + sum(n for _, n in state.answered)


def _next_midnight(now: dt.datetime) -> dt.datetime:
    return dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), dt.UTC)


def _pause(state: LimitState, until: dt.datetime, reason: str) -> None:
    if state.paused_until is None or until > state.paused_until:
        state.paused_until, state.pause_reason = until, reason


def _settle(state: LimitState, now: dt.datetime) -> None:
    """Recount, and pause until the count drops below the limit when it is full."""
    if state.pause_reason == BURST or (state.paused_until is not None
                                       and now >= state.paused_until):
        state.paused_until = state.pause_reason = None
    state.used = counted(state, now)
    interval_ms = state.interval // _MS
    drops = sorted([(at + interval_ms, n) for at, n in state.answered]
                   + [(until + interval_ms, n) for n, until in state.in_flight.values()])
    state.window_ends_at = _at(drops[0][0]) if drops else None
    if allowance(state) > 0:
        return  # HighLevel says there is room: no pause for a full log
    excess = state.used - state.burst_max
    for at, n in drops:
        if excess < 0:
            break
        excess -= n
        if excess < 0:
            _pause(state, _at(at), BURST)


def roll(state: LimitState, now: dt.datetime) -> None:
    """Start a new day when the current one has ended; end pauses that are over."""
    if state.day_ends_at is None or now >= state.day_ends_at:
        state.daily_used, state.day_ends_at = 0, _next_midnight(now)
    _settle(state, now)


def reserve(state: LimitState, want: int, now: dt.datetime, *, token: str,
            hold: dt.timedelta = IN_FLIGHT_HOLD) -> int:
    """Take up to ``want`` sends (lease ``token``'s) from the budget; a failing
    resource gets one, its probe, and waits for its answer."""
    roll(state, now)
    if state.paused_until is not None:
        return 0
    granted = max(0, min(want, max(state.burst_max - state.used, allowance(state)),
                         state.daily_max - state.daily_used))
    if state.failures and granted:
        granted = 1
        _pause(state, now + hold, PROBE)
    if granted:
        entry = state.in_flight.setdefault(token, [0, _ms(now + hold)])
        entry[0] += granted
        state.daily_used += granted
        state.reserved_total += granted
    if state.daily_used >= state.daily_max:
        _pause(state, state.day_ends_at, DAILY)
    _settle(state, now)
    return granted


def answered(state: LimitState, token: str, n: int, now: dt.datetime, *,
             at: dt.datetime | None = None) -> None:
    """``n`` of lease ``token``'s sends, recorded at ``now``, were answered (or given up)
    at ``at`` (default ``now``). They counted as in flight until now, and count one
    interval from their answer: the bound holds from the answer's own time, and a batch's
    early answers are not held back by its slowest one."""
    entry = state.in_flight.get(token)
    if entry is not None:  # (an unknown token's hold has ended: counted twice, never less)
        entry[0] -= min(n, entry[0])
        if entry[0] <= 0:
            del state.in_flight[token]
    _add_answered(state, min(at or now, now), n)
    _settle(state, now)


def reserved_at(state: LimitState, token: str, hold: dt.timedelta) -> dt.datetime | None:
    """When lease ``token``'s sends in flight were reserved (None: none are)."""
    entry = state.in_flight.get(token)
    return None if entry is None else _at(entry[1]) - hold


def learn(state: LimitState, rate: RateLimit, *, status: int | None, now: dt.datetime,
          retry_after: float | None = None, sent_since: dt.datetime | None = None,
          own: int = 0) -> None:
    """Correct the state from one HighLevel answer (its headers, a 429).

    ``sent_since``: when the sends that brought these headers were reserved, ``own`` of
    them, already answered (``answered``): with it, the figure ``remaining`` becomes an
    allowance (module docstring).
    """
    roll(state, now)
    if rate.interval_ms and rate.interval_ms > 0:
        state.interval = dt.timedelta(milliseconds=rate.interval_ms)
    if rate.max and rate.max > 0:
        state.burst_max = rate.max
    if rate.daily_limit and rate.daily_limit > 0:
        state.daily_max = rate.daily_limit
    if rate.remaining is not None:
        # HighLevel's count is the truth where it is higher than ours (sends we do not know
        # of); ours is higher otherwise, and stays: answers lag their sends.
        if sent_since is not None and status != 429:  # (before the sends added below,
            since = _ms(sent_since)                    # which HighLevel did count)
            uncounted = (sum(n for n, _ in state.in_flight.values())
                         + sum(n for at, n in state.answered if at >= since) - own)
            room = max(rate.remaining, 0) - max(uncounted, 0)
            if room > allowance(state):
                state.allowed = [room, state.reserved_total]
        unknown = state.burst_max - max(rate.remaining, 0) - counted(state, now)
        if unknown > 0:
            _add_answered(state, now, unknown)
    if rate.daily_remaining is not None:
        state.daily_used = max(state.daily_used, state.daily_max - rate.daily_remaining)
        if rate.daily_remaining <= 0:
            _pause(state, state.day_ends_at, DAILY)
    if status == 429:
        state.allowed = None
        wait = state.interval if retry_after is None else dt.timedelta(seconds=retry_after)
        _pause(state, now + min(max(wait, dt.timedelta(seconds=1)), MAX_PAUSE), LIMITED)
    _settle(state, now)


def transient(outcome) -> bool:
    """Whether an attempt failed the way an outage does (5xx, 408, no answer at all) and
    is to be retried (a view that expired or was refused is not a probe's answer)."""
    if outcome.result != "retry":
        return False
    status = outcome.http_status
    return status is None or status >= 500 or status == 408


def answered_by_highlevel(outcome) -> bool:
    """Whether HighLevel itself answered (any status but 5xx and 408)."""
    status = outcome.http_status
    return status is not None and status < 500 and status != 408


def probe_delay(failures: int) -> dt.timedelta:
    """How long a failing resource waits before its next probe."""
    return min(PROBE_CAP, PROBE_BASE * 2 ** min(max(failures - 1, 0), 16))


def observe_health(state: LimitState, outcomes, now: dt.datetime) -> bool:
    """Follow a batch's outcomes for the resource; True when it recovered (a failing
    resource got an answer from HighLevel)."""
    if any(answered_by_highlevel(o) for o in outcomes):
        recovered, state.failures = state.failures > 0, 0
        if state.pause_reason in (PROBE, FAILING):
            state.paused_until = state.pause_reason = None
        _settle(state, now)
        return recovered
    if any(transient(o) for o in outcomes):
        state.failures += 1
        if state.pause_reason == PROBE:  # the probe answered: wait for the next one
            state.paused_until = state.pause_reason = None
        _pause(state, now + probe_delay(state.failures), FAILING)
    return False
