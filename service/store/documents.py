"""The documents' state machine: the states a queue row can be in, and every transition.

One row per (kind, location, document) coalesces its views (``db.documents``). This
module owns ``documents.status`` and the lease columns: every other module changes them
by calling a function here.

States:
  pending  views wait to be sent, due at ``due_at``; leased while ``locked_until`` holds
  idle     every view sent (HighLevel answered 200)
  blocked  parked: the location has no usable token (kept; sent once one is stored)
  dead     the last send failed for good (kept; ``replay`` sends it again)

Transitions (each in the caller's transaction, on its connection):
  record   (none) | idle | dead -> pending: the view writer's statements, from ``REOPEN``
           and ``REOPENED`` below (``view_sql``; the hot path keeps its own SQL shape)
  claim    pending -> leased                              ``claim``
  renew    leased -> leased, for another lease            ``renew`` (while its sends run)
  outcome  leased -> idle | pending | dead | blocked      ``apply_outcomes``
  release  leased -> pending, due at once                 ``release``
  recover  pending (backed off) -> pending, due at once   ``release_backed_off``
  park     pending -> blocked                             ``park``
  unpark   blocked -> pending                             ``unpark``
  replay   dead -> pending                                ``replay``
  purge    any -> deleted                                 ``purge``

The outcome statements are built once with bind parameters: building SQLAlchemy
constructs per send cost more CPU than the send itself. A batch of outcomes is one commit
(one fsync on SQLite) and one rate-limit update per resource, not one per send.
"""

from __future__ import annotations

import datetime as dt
import functools
import secrets
from collections import Counter
from collections.abc import Collection, Iterable, Sequence

import sqlalchemy as sa

from . import batched, outbox
from .claims import Claim, Outcome
from .db import UTCDateTime, delivery_log, documents, installs, locations
from .deliverylog import LogFilter, matching

# Document row states (the store's queue).
PENDING, IDLE, BLOCKED, DEAD = "pending", "idle", "blocked", "dead"

# record: an idle or dead document that got views is pending again, due at once or at the
# end of the coalescing window after its last send. SQLite: a statement of its own
# (parameters: the first view's arrival, the row id); PostgreSQL: the upsert's SET decides
# with ``REOPENED`` (its statement is in ``view_sql``).
REOPEN = f"""
UPDATE documents SET status = '{PENDING}',
    due_at = CASE WHEN quiet_until > ?1 THEN quiet_until ELSE ?1 END,
    pending_since = ?1, attempts = 0, dead_reason = NULL
WHERE id = ?2 AND status IN ('{IDLE}', '{DEAD}')
"""
REOPENED = f"d.status IN ('{IDLE}', '{DEAD}')"
REOPENED_STATES = (IDLE, DEAD)  # the statuses the writer's counts show for a reopen


d = documents.c
_now = sa.bindparam("now_at", type_=UTCDateTime())
_quiet = sa.bindparam("quiet_at", type_=UTCDateTime())
_seq_to = sa.bindparam("seq_to", type_=sa.Integer())
_newer = d.views_seq > _seq_to  # views arrived while the send was in flight
_common = {
    "locked_until": None, "lease_token": None, "updated_at": _now, "last_attempt_at": _now,
    "last_status": sa.bindparam("http_status", type_=sa.Integer()),
    "last_error": sa.bindparam("error_text", type_=sa.String()),
}
_mine = sa.and_(d.id == sa.bindparam("row_id"), d.lease_token == sa.bindparam("lease"))

STATEMENTS = {
    "delivered": documents.update().where(_mine).values(
        **_common, sent_seq=_seq_to, attempts=0, last_sent_at=_now, dead_reason=None,
        quiet_until=_quiet, due_at=_quiet,
        status=sa.case((_newer, PENDING), else_=IDLE),
        pending_since=sa.case((_newer, _now), else_=sa.null())),
    "retry": documents.update().where(_mine).values(
        **_common, status=PENDING,
        due_at=sa.bindparam("next_due_at", type_=UTCDateTime()),
        attempts=d.attempts + sa.bindparam("spent", type_=sa.Integer())),
    "dead": documents.update().where(_mine).values(
        **_common, failed_seq=_seq_to, attempts=0, quiet_until=_quiet, due_at=_quiet,
        dead_reason=sa.bindparam("reason_text", type_=sa.String()),
        status=sa.case((_newer, PENDING), else_=DEAD),
        pending_since=sa.case((_newer, _now), else_=d.pending_since)),
    "blocked": documents.update().where(_mine).values(**_common, status=BLOCKED, due_at=_now),
}
_HELD = sa.select(d.id, d.lease_token).where(
    d.id.in_(sa.bindparam("ids", expanding=True))).with_for_update()


def apply_outcomes(conn, results: Sequence[tuple[Claim, Outcome]], *, now: dt.datetime,
                   window: dt.timedelta, limiter) -> list[bool]:
    """outcome: apply ``(claim, outcome)`` pairs in the caller's transaction; log each
    attempt.

    Returns, per pair, whether the lease was still ours (a late answer after the lease
    ended changes nothing but the log).
    """
    # One statement per kind of outcome (an executemany), not one per send: which leases
    # are still ours is read first, with the rows locked (PostgreSQL; SQLite's write
    # transaction already excludes every other writer), so no claim can take one between.
    held = {(row.id, row.lease_token) for row in conn.execute(
        _HELD, {"ids": [c.row_id for c, _ in results]})}
    kept, by_result = [], {}
    for claim, outcome in results:
        statement = STATEMENTS.get(outcome.result)
        if statement is None:
            raise ValueError(f"unknown result {outcome.result!r}")
        mine = (claim.row_id, claim.lease_token) in held
        kept.append(mine)
        if mine:
            by_result.setdefault(outcome.result, []).append({
                "now_at": now, "quiet_at": now + window, "seq_to": claim.seq_to,
                "http_status": outcome.http_status, "row_id": claim.row_id,
                "lease": claim.lease_token,
                "error_text": None if outcome.result == "delivered" else clip(outcome.message),
                "next_due_at": outcome.next_due or now, "spent": int(outcome.spend_attempt),
                "reason_text": outcome.outcome,
            })
    for result, params in by_result.items():
        conn.execute(STATEMENTS[result], params)
    recovered = limiter.observe_batch(conn, results, now=now)  # budgets, headers, health
    if recovered:
        release_backed_off(conn, recovered, now=now)
    batched.insert_many(conn, delivery_log, [{
        "at": now, "document_row": claim.row_id, "kind": claim.kind,
        "location_id": claim.location_id, "document_id": claim.document_id,
        "attempt": claim.attempts + 1, "outcome": outcome.outcome,
        "http_status": outcome.http_status, "message": clip(outcome.message),
        "trace_id": outcome.trace_id, "latency_ms": outcome.latency_ms,
        "views_covered": claim.views, "seq_to": claim.seq_to, "request_id": claim.request_id,
        "waited_ms": waited_ms(claim, now),
    } for claim, outcome in results])
    outbox.views_dead(conn, results, kept, now=now)  # operators are told (outbox)
    return kept


def waited_ms(claim: Claim, now: dt.datetime) -> int:
    """How long the claim's first waiting view has waited at ``now``, in milliseconds."""
    return max((now - claim.pending_since) // dt.timedelta(milliseconds=1), 0)


def clip(message: str | None, limit: int = 500) -> str | None:
    return message if message is None or len(message) <= limit else message[: limit - 1] + "…"


def claim(conn, *, now: dt.datetime, limit: int, lease: dt.timedelta, limiter,
          dialect: str) -> list[Claim]:
    """claim: lease up to ``limit`` due documents; others skip them until the lease ends.

    Documents of a resource whose rate-limit budget is spent are skipped, and each
    claimed document takes one send from its resource's budget.
    """
    due, take = _claim_statements(limiter, dialect)
    token = secrets.token_hex(16)
    rows = conn.execute(due, {"now_at": now, "limit": limit}).all()
    budget = limiter.reserve_many(conn, Counter(r.location_id for r in rows), now=now,
                                  token=token)
    ids = []
    for row in rows:
        if budget.get(row.location_id, 0) > 0:
            budget[row.location_id] -= 1
            ids.append(row.id)
    if not ids:
        return []
    until = now + lease
    rows = sorted(conn.execute(take, {"ids": ids, "until_at": until, "lease": token,
                                      "now_at": now}), key=lambda r: (r.due_at, r.id))
    return [Claim(row_id=r.id, kind=r.kind, location_id=r.location_id,
                  document_id=r.document_id, seq_from=max(r.sent_seq, r.failed_seq),
                  seq_to=r.claimed_seq, attempts=r.attempts,
                  pending_since=r.pending_since or now, lease_token=token,
                  request_id=r.last_request_id, locked_until=until)
            for r in rows]


@functools.lru_cache(maxsize=16)
def _claim_statements(limiter, dialect: str) -> tuple:
    """claim's select and update (returning what a ``Claim`` needs), built once."""
    due = (
        sa.select(d.id, d.location_id)
        .where(d.status == PENDING, d.due_at <= _now)
        .where(sa.or_(d.locked_until.is_(None), d.locked_until <= _now))
        .order_by(d.due_at)
        .limit(sa.bindparam("limit", type_=sa.Integer()))
    )
    paused = limiter.paused_resources(_now)
    if paused is not None:
        due = due.where(d.location_id.not_in(paused))
    if dialect == "postgresql":
        # SKIP LOCKED: forwarders never wait on each other's rows. SQLite's BEGIN
        # IMMEDIATE serialises claims instead.
        due = due.with_for_update(of=documents, skip_locked=True)
    take = documents.update().where(d.id.in_(sa.bindparam("ids", expanding=True))).values(
        locked_until=sa.bindparam("until_at", type_=UTCDateTime()),
        lease_token=sa.bindparam("lease"), claimed_seq=d.views_seq, updated_at=_now,
    ).returning(d.id, d.kind, d.location_id, d.document_id, d.sent_seq, d.failed_seq,
                d.claimed_seq, d.attempts, d.pending_since, d.last_request_id, d.due_at)
    return due, take


def renew(conn, tokens: Collection[str], *, now: dt.datetime, lease: dt.timedelta) -> set[int]:
    """renew: extend the leases still held under ``tokens`` to ``now + lease``, in one
    statement; return the ids of the rows renewed. A row missing was recorded, or its lease
    ended and another forwarder claimed it (the token is no longer the caller's)."""
    if not tokens:
        return set()
    return set(conn.execute(
        documents.update().where(d.lease_token.in_(list(tokens)), d.status == PENDING)
        .values(locked_until=now + lease).returning(d.id)).scalars())


def release_backed_off(conn, location_ids: Iterable[str], *, now: dt.datetime) -> int:
    """recover: HighLevel answers the locations again; their documents backed off after
    transient failures (5xx, 408, no answer) are due now, sent at the limit's pace."""
    return conn.execute(documents.update().where(
        d.location_id.in_(sorted(location_ids)), d.status == PENDING, d.due_at > now,
        d.attempts > 0, sa.or_(d.last_status.is_(None), d.last_status >= 500,
                               d.last_status == 408),
        sa.or_(d.locked_until.is_(None), d.locked_until <= now),
        sa.or_(d.quiet_until.is_(None), d.quiet_until <= now),
    ).values(due_at=now, updated_at=now)).rowcount


def release(conn, claims: Iterable[Claim], *, now: dt.datetime) -> None:
    """release: give back leases that were not attempted (shutdown), due at once."""
    for held in claims:
        conn.execute(documents.update()
                     .where(d.id == held.row_id, d.lease_token == held.lease_token)
                     .values(locked_until=None, lease_token=None, updated_at=now))


def park(conn, where, *, now: dt.datetime) -> int:
    """park: the pending documents matching ``where`` (a condition on ``documents``) wait,
    blocked, until a usable token is stored; return how many. A row leased to a forwarder
    finishes its send, and is parked when it comes round again without a token."""
    return conn.execute(
        documents.update().where(where, d.status == PENDING)
        .where(sa.or_(d.locked_until.is_(None), d.locked_until <= now))
        .values(status=BLOCKED, updated_at=now)).rowcount


def park_location(conn, location_id: str, *, now: dt.datetime) -> int:
    """park a location's pending documents (token missing or invalid)."""
    return park(conn, d.location_id == location_id, now=now)


def unpark(conn, *, now: dt.datetime, location_id: str | None = None) -> int:
    """unpark: blocked documents are due again where the location now has an active token
    (or an agency token that can mint one); return how many."""
    usable = sa.select(locations.c.location_id).where(locations.c.status == "active")
    # ...or whose company's agency token can mint one (installed under that company).
    agencies = sa.select(locations.c.location_id).where(
        locations.c.status == "active", locations.c.token_kind == "agency")
    mintable = sa.select(installs.c.target_id).where(
        installs.c.target_type == "location", installs.c.status == "installed",
        installs.c.company_id.in_(agencies))
    stmt = documents.update().where(d.status == BLOCKED,
                                    d.location_id.in_(sa.union(usable, mintable)))
    if location_id is not None:
        stmt = stmt.where(d.location_id == location_id)
    # Parking must not skip the coalescing window: due at its end at the earliest.
    due = sa.case((sa.and_(d.quiet_until.is_not(None), d.quiet_until > now), d.quiet_until),
                  else_=now)
    return conn.execute(stmt.values(status=PENDING, due_at=due, updated_at=now)).rowcount


def replay(conn, filters: LogFilter, *, now: dt.datetime, dry_run: bool = False) -> int:
    """replay: re-queue dead documents matching ``filters``; return how many (0 when run
    again). ``outcome`` matches the reason it died (``permanent``, ``expired``); the time
    range matches when it died. The replayed send covers every view the dead one covered.
    With ``dry_run``, count the documents it would re-queue and change nothing.
    """
    if dry_run:
        return conn.execute(_replayable(sa.select(sa.func.count()).select_from(documents),
                                        filters)).scalar()
    return conn.execute(_replayable(documents.update(), filters).values(
        status=PENDING, due_at=now, pending_since=now, attempts=0, dead_reason=None,
        failed_seq=d.sent_seq, updated_at=now)).rowcount


def _replayable(stmt, filters: LogFilter):
    """``stmt`` limited to the dead documents ``filters`` matches (replay's and its dry
    run's one definition)."""
    return matching(stmt.where(d.status == DEAD), filters, table=documents,
                    outcome=d.dead_reason, at=d.last_attempt_at)


def purge(conn, location_id: str, *, batch: int) -> int:
    """purge: delete up to ``batch`` of a location's documents (their events first:
    ``retention.purge_location``); return how many."""
    ids = conn.execute(sa.select(d.id).where(d.location_id == location_id)
                       .limit(batch)).scalars().all()
    return conn.execute(documents.delete().where(d.id.in_(ids))).rowcount if ids else 0
