"""The locations directory: every location that has a token or views, its state and counts.

A location is listed when it has a token (``locations``) or the forwarder has seen views
of it (``known_locations``, kept by ``seen``: seconds after it first tries one of the
location's documents, or minutes after the views, when all of them are filtered machine
opens). So a location whose views wait without a token (a typo in a ``locationId``, an
uninstalled app) shows as ``no_token`` instead of being invisible. A location's row is
read from the tables directly (its documents by the ``(location_id, status)`` index), so
its counts are current even when the forwarder is behind.

A location's state is the worst that applies, in this order (``LOCATION_STATES``):

  no_token  views are stored but no token is: nothing can be sent
  invalid   the token was refused (401 twice, 403, a dead refresh token): views wait
  inactive  HighLevel says the location is not active: views wait, retried hourly
  dead      some documents failed for good (404...): they wait for a replay
  paused    the location's rate-limit budget is spent until ``pausedUntil``
  ok        none of the above

Pages are in ``locationId`` order (the database's collation) with a keyset cursor (the
last id of the page): the ids come from the primary keys of ``locations`` and
``known_locations`` (a state other than no_token filters ``locations`` with index probes),
and only the page's locations are counted, so a page costs about the same wherever it
starts. ``search`` is a case-insensitive part of the id: it reads both id lists whole
(10,000 locations: a few milliseconds).
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from . import seen
from .db import delivery_log, documents, known_locations, locations, rate_limits, view_counts
from .deliverylog import as_attempt
from .documents import BLOCKED, DEAD, IDLE, PENDING
from .tokens import INACTIVE, INVALID

NO_TOKEN, OK, PAUSED = "no_token", "ok", "paused"
# Worst first: a location's state is the first that applies.
LOCATION_STATES = (NO_TOKEN, INVALID, INACTIVE, DEAD, PAUSED, OK)
QUEUE_STATES = (PENDING, BLOCKED, DEAD, IDLE)
RECENT_ATTEMPTS = 10

L, D, R, V, K = (locations.c, documents.c, rate_limits.c, view_counts.c,
                 known_locations.c)


def state_of(token_status: str | None, *, dead_documents: int, paused: bool) -> str:
    """The location's state from its facts (``_state_filter`` says the same in SQL)."""
    if token_status is None:
        return NO_TOKEN
    if token_status in (INVALID, INACTIVE):
        return token_status
    if dead_documents:
        return DEAD
    return PAUSED if paused else OK


def _state_filter(state: str, now: dt.datetime):
    """The condition on ``locations`` rows that ``state_of`` gives ``state`` (not no_token)."""
    dead = sa.exists().where(D.location_id == L.location_id, D.status == DEAD)
    paused = sa.exists().where(R.resource == L.location_id, R.paused_until > now)
    usable = L.status.not_in((INVALID, INACTIVE))
    return {
        INVALID: L.status == INVALID,
        INACTIVE: L.status == INACTIVE,
        # The cheaper probe first: a pause is a primary-key look-up, dead documents an
        # index range.
        DEAD: sa.and_(usable, dead),
        PAUSED: sa.and_(usable, paused, ~dead),
        OK: sa.and_(usable, ~paused, ~dead),
    }[state]


def _matches(column, search: str | None):
    """Case-insensitive substring match of ``search`` in ``column`` (no condition if None)."""
    if not search:
        return sa.true()
    escaped = search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return sa.func.lower(column).like(f"%{escaped}%", escape="\\")


def page_ids(conn, *, state: str | None, search: str | None, after: str,
             limit: int, now: dt.datetime) -> list[str]:
    """Up to ``limit`` location ids above ``after`` in the state (any when None)."""
    tokens = sa.select(L.location_id).where(L.location_id > after, _matches(L.location_id, search))
    viewed = sa.select(K.location_id).where(K.location_id > after, _matches(K.location_id, search))
    if state == NO_TOKEN:
        query = (viewed.where(~sa.exists().where(L.location_id == K.location_id))
                 .order_by(K.location_id).limit(limit))
    elif state is not None:
        query = tokens.where(_state_filter(state, now)).order_by(L.location_id).limit(limit)
    else:  # the first ``limit`` of each, merged in the database's order
        every = sa.union(tokens.order_by(L.location_id).limit(limit).subquery().select(),
                         viewed.order_by(K.location_id).limit(limit).subquery().select()
                         ).subquery()
        query = sa.select(every.c.location_id).order_by(every.c.location_id).limit(limit)
    return list(conn.execute(query).scalars())


def rows_for(conn, ids: list[str], *, now: dt.datetime) -> list[dict]:
    """The directory rows of those of ``ids`` that have a token, documents or counted
    views, in that order."""
    if not ids:
        return []
    tokens = {r.location_id: r for r in conn.execute(
        sa.select(locations).where(L.location_id.in_(ids)))}
    pauses = {r.resource: r for r in conn.execute(
        sa.select(R.resource, R.paused_until, R.pause_reason)
        .where(R.resource.in_(ids), R.paused_until > now))}
    settled = sa.case((D.sent_seq > D.failed_seq, D.sent_seq), else_=D.failed_seq)
    queues: dict[str, dict] = {}
    for r in conn.execute(
            sa.select(D.location_id, D.status, sa.func.count().label("n"),
                      sa.func.sum(D.views_seq - settled).label("unsent"),
                      sa.func.sum(D.failed_seq - D.sent_seq).label("failed"),
                      sa.func.sum(D.sent_seq).label("sent"),
                      sa.func.max(D.last_sent_at).label("last_sent"))
            .where(D.location_id.in_(ids)).group_by(D.location_id, D.status)):
        q = queues.setdefault(r.location_id, {"queue": dict.fromkeys(QUEUE_STATES, 0),
                                              "waiting": 0, "dead": 0, "sent": 0,
                                              "last": None})
        q["queue"][r.status] = q["queue"].get(r.status, 0) + r.n
        q["sent"] += int(r.sent or 0)
        if r.status in (PENDING, BLOCKED):
            q["waiting"] += int(r.unsent or 0)
        elif r.status == DEAD:
            q["dead"] += int(r.failed or 0)
        if r.last_sent is not None and (q["last"] is None or r.last_sent > q["last"]):
            q["last"] = _aware(r.last_sent)
    # Locations with neither (their views all filtered machine opens): rare, so asked
    # for only when the page has some.
    rest = [i for i in ids if i not in tokens and i not in queues]
    counted = set(conn.execute(sa.select(V.location_id).distinct()
                               .where(V.location_id.in_(rest))).scalars()) if rest else set()
    return [_row(i, tokens.get(i), pauses.get(i), queues.get(i)) for i in ids
            if i in tokens or i in queues or i in counted]


def _aware(value):
    # An aggregate's result skips the column's type on SQLite: a naive UTC time, or text.
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value


def empty_row(location_id: str) -> dict:
    """The row of a location known only by views newer than the counts (no token, no
    document: machine opens only)."""
    return _row(location_id, None, None, None)


def _row(location_id: str, token, pause, counts) -> dict:
    counts = counts or {"queue": dict.fromkeys(QUEUE_STATES, 0), "waiting": 0, "dead": 0,
                        "sent": 0, "last": None}
    status = token.status if token is not None else None
    return {
        "locationId": location_id,
        "state": state_of(status, dead_documents=counts["queue"][DEAD],
                          paused=pause is not None),
        "tokenKind": token.token_kind if token is not None else None,
        "tokenStatus": status,
        "status": status,  # the name GET /v1/locations used before tokenStatus
        "expiresAt": token.expires_at if token is not None else None,
        "lastError": token.last_error if token is not None else None,
        "hasRefreshToken": token is not None and token.refresh_token is not None,
        "companyId": token.company_id if token is not None else None,
        "retryAt": token.retry_at if token is not None else None,
        "createdAt": token.created_at if token is not None else None,
        "updatedAt": token.updated_at if token is not None else None,
        "queue": counts["queue"],
        "waitingViews": counts["waiting"],
        "deadViews": counts["dead"],
        "delivered": counts["sent"],
        "lastDeliveryAt": counts["last"],
        "rateLimit": None if pause is None else {
            "pausedUntil": pause.paused_until, "reason": pause.pause_reason},
    }


def details(conn, location_id: str) -> dict:
    """What a location's page shows beyond its row: views by verdict, the rate-limit
    budget and the latest attempts."""
    limits = conn.execute(sa.select(rate_limits).where(R.resource == location_id)).first()
    log = delivery_log.c
    attempts = conn.execute(sa.select(delivery_log).where(log.location_id == location_id)
                            .order_by(log.id.desc()).limit(RECENT_ATTEMPTS))
    return {
        "verdicts": seen.views_by_verdict(conn, location_id),
        "limits": None if limits is None else {
            "burstMax": limits.burst_max, "intervalMs": limits.interval_ms,
            "used": limits.used, "windowEndsAt": limits.window_ends_at,
            "dailyMax": limits.daily_max, "dailyUsed": limits.daily_used,
            "dayEndsAt": limits.day_ends_at},
        "recentAttempts": [as_attempt(a) for a in attempts],
    }

