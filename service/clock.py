"""Time as the service reads it: now in UTC, and a lifetime in seconds made a moment."""

from __future__ import annotations

import datetime as dt


def utcnow() -> dt.datetime:
    """Return the current time, timezone-aware, in UTC (the default ``clock``)."""
    return dt.datetime.now(dt.UTC)


def expiry(expires_in: int | None, *, now: dt.datetime) -> dt.datetime | None:
    """Return when something ``expires_in`` seconds after ``now`` expires; None if it
    was given no lifetime (None, or HighLevel's 0)."""
    return now + dt.timedelta(seconds=expires_in) if expires_in else None
