"""The forwarder: claim due documents, tell HighLevel, record what happened.

``Forwarder.forward_once`` is one iteration (tests call it directly with a fake clock
and an inline executor); ``run`` loops until its ``stop`` event is set. No Flask here.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING

from ..clock import utcnow
from ..highlevel.client import HighLevel, HighLevelError, Response
from ..metrics import observe_lease, observe_outcomes
from ..store.deliverylog import prune
from ..store.queue import Claim, Outcome, Store
from ..store.retention import prune_events
from ..store.tokens import TokenVault
from .credentials import Credentials, Refusal, TokenProvider
from .leases import Leases

if TYPE_CHECKING:
    from .notify import NotificationWatch

logger = logging.getLogger(__name__)

PERMANENT = {400, 404, 405, 409, 410, 413, 415, 422}
AUTH = {401, 403}
BACKOFF_BASE, BACKOFF_CAP = 2.0, 600.0
UNBLOCK_EVERY = dt.timedelta(seconds=5)
PRUNE_EVERY = dt.timedelta(hours=1)
FOLD_EVERY = dt.timedelta(minutes=1)
COUNT_EVERY = dt.timedelta(minutes=1)  # views by verdict per location (store.count_views)
DEFAULT_RATE_INTERVAL_MS = 10_000  # HighLevel's burst window when a 429 says nothing
WAKE_MARGIN = 0.002  # seconds past a due time or a pause's end: then it surely has passed


def retry_delay(attempt: int, *, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP,
                rand: Callable[[], float] = random.random,
                retry_after: float | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` + 1: full jitter, capped.

    ``Retry-After`` wins when the server sent one (clamped to ``cap``).
    """
    if retry_after is not None:
        return min(max(retry_after, 0.0), cap)
    return rand() * min(cap, base * 2 ** min(attempt, 32))


def classify(resp: Response | None, claim: Claim, *, now: dt.datetime, max_age: dt.timedelta,
             error: str | None = None, rand: Callable[[], float] = random.random) -> Outcome:
    """Map one HighLevel answer (or a transport error) to what happens to the row.

    A 401/403 reaches here only while the token policy still holds the token usable (a
    first 401 in a row may be a gateway hiccup): it is retried soon.
    """
    status = resp.status if resp else None
    details = {"http_status": status, "latency_ms": resp.latency_ms if resp else None,
               "trace_id": resp.trace_id if resp else None}
    if resp:
        details.update(rate_limit=resp.rate_limit, retry_after=resp.retry_after,
                       answered_at=now)
    message = (resp.message if resp else None) or error
    if status is not None and 200 <= status < 300:
        return Outcome("delivered", "delivered", **details)
    if status in PERMANENT:
        return Outcome("dead", "permanent", message=message, **details)
    if status in AUTH:
        delay = retry_delay(claim.attempts, rand=rand)
        return Outcome("retry", "unauthorized", message=message,
                       next_due=now + dt.timedelta(seconds=delay), **details)
    if now - claim.pending_since >= max_age:
        return Outcome("dead", "expired", message=message or f"HTTP {status}", **details)
    if status == 429:
        # HighLevel's 429 rarely has Retry-After; its headers say when the window ends.
        wait = resp.retry_after
        if wait is None:
            wait = (resp.rate_limit.interval_ms or DEFAULT_RATE_INTERVAL_MS) / 1000
        delay = retry_delay(claim.attempts, rand=rand, retry_after=wait)
        return Outcome("retry", "rate_limited", message=message, spend_attempt=False,
                       next_due=now + dt.timedelta(seconds=delay), **details)
    # 5xx, 408, other unexpected statuses, timeouts, connection errors: retry.
    delay = retry_delay(claim.attempts, rand=rand, retry_after=resp.retry_after if resp else None)
    outcome = "retry" if resp else "network_error"
    return Outcome("retry", outcome, message=message or f"HTTP {status}",
                   next_due=now + dt.timedelta(seconds=delay), **details)


class Forwarder:
    """One forwarder process's state: where to read, whom to call, how many at once."""

    def __init__(self, store: Store, vault: TokenVault, client: HighLevel, *,
                 executor: Executor, concurrency: int = 16, max_age_seconds: int = 86400,
                 clock: Callable[[], dt.datetime] = utcnow,
                 rand: Callable[[], float] = random.random,
                 stop: threading.Event | None = None, log_days: int = 30,
                 event_days: int = 30,
                 tokens: TokenProvider | None = None,
                 watch: NotificationWatch | None = None):
        self.store = store
        self.tokens = tokens or TokenProvider(vault)  # every decision about a token
        self.client = client
        self.executor = executor
        self.concurrency = concurrency
        self.max_age = dt.timedelta(seconds=max_age_seconds)
        self.clock = clock
        self.rand = rand
        self.stop = stop or threading.Event()
        self.log_days = dt.timedelta(days=log_days)
        self.event_days = dt.timedelta(days=event_days)
        self._last_unblock: dt.datetime | None = None
        self._last_prune: dt.datetime | None = None
        self.watch = watch  # operator notifications' periodic checks (notify.py)
        self._last_fold: dt.datetime | None = None
        self._last_count: dt.datetime | None = None
        self.leases = Leases(store, clock=clock)  # renewed while sends run (leases.py)

    def forward_once(self, *, now: dt.datetime | None = None) -> int:
        """Claim what is due, send it (up to ``concurrency`` at once), record outcomes."""
        now = now or self.clock()
        if self._last_unblock is None or now - self._last_unblock >= UNBLOCK_EVERY:
            # Heals a race with a token stored while a send was deciding to block.
            for location_id in self.tokens.retry_inactive(now=now):
                logger.info("token.reactivated", extra={"location_id": location_id})
            self.store.unblock(now=now)
            self._last_unblock = now
        if self._last_fold is None or now - self._last_fold >= FOLD_EVERY:
            self._last_fold = now  # before pruning: the overview's counts keep what it deletes
            self.store.fold_stats(now=now)
        if self._last_count is None or now - self._last_count >= COUNT_EVERY:
            self._last_count = now  # before pruning too: views are counted before they go
            self.store.count_views(now=now)
        if self._last_prune is None or now - self._last_prune >= PRUNE_EVERY:
            self._last_prune = now
            pruned = prune(self.store.engine, older_than=now - self.log_days)
            if pruned:
                logger.info("delivery_log.pruned", extra={"rows": pruned})
            pruned = prune_events(self.store.engine, older_than=now - self.event_days)
            if pruned:
                logger.info("events.pruned", extra={"rows": pruned})
        if self.watch is not None:
            self.watch.tick(now=now)  # views parked without a token too long: tell operators
        claims = self.store.claim_due(now=now, limit=self.concurrency)
        if not claims:
            return 0
        with self.leases.holding(claims):  # renewed until recorded or released
            self._send_batch(claims)
        return len(claims)

    def idle_wait(self, longest: float) -> float:
        """Seconds to wait when nothing could be claimed: until the next document comes
        due or the next rate-limit pause ends, when that is sooner than ``longest`` (the
        idle back-off). A window that opens is used as it opens, not up to a poll later."""
        now = self.clock()
        at = self.store.next_due(now=now)
        if at is None:
            return longest
        return min(longest, max((at - now).total_seconds(), 0.0) + WAKE_MARGIN)

    def _send_batch(self, claims: list[Claim]) -> None:
        """Send claimed documents, record the outcomes, release those not attempted."""
        # One token query for the batch's locations (a refresh, if due, per location).
        tokens = {loc: self._credentials(loc, creds) for loc, creds in self.tokens.get_many(
            dict.fromkeys(claim.location_id for claim in claims), now=self.clock()).items()}
        futures = [self.executor.submit(self.attempt, claim, tokens[claim.location_id])
                   for claim in claims]
        results = [(claim, future.result()) for claim, future in zip(claims, futures,
                                                                     strict=True)]
        self._record([(claim, outcome) for claim, outcome in results if outcome is not None])
        released = [claim for claim, outcome in results if outcome is None]
        if released:
            # Not attempted: shutting down, or the lease was ending or taken (leases.py).
            self.store.release(released, now=self.clock())

    def _credentials(self, location_id: str, creds: Credentials | Refusal
                     ) -> Credentials | Outcome:
        """The token to send with, or the outcome that parks the location's views."""
        if isinstance(creds, Refusal):
            if creds.park_location:  # e.g. a token no key decrypts: every view waits
                self.store.block_location(location_id, now=self.clock())
            return Outcome("blocked", creds.reason, message=creds.message)
        return creds

    def attempt(self, claim: Claim, creds: Credentials | Outcome) -> Outcome | None:
        """Send one claimed document; return what happened (None: not sent: stopping, or
        its lease is no longer surely held)."""
        if self.stop.is_set() or not self.leases.holds(claim):
            return None
        if isinstance(creds, Outcome):
            return creds
        try:
            resp = self.tokens.send(
                creds, lambda token: self.client.mark_viewed(
                    kind=claim.kind, document_id=claim.document_id, token=token),
                clock=self.clock)
        except HighLevelError as exc:
            return classify(None, claim, now=self.clock(), max_age=self.max_age,
                            error=str(exc), rand=self.rand)
        if isinstance(resp, Refusal):
            return self._refused(claim, resp)
        return classify(resp, claim, now=self.clock(), max_age=self.max_age, rand=self.rand)

    def _refused(self, claim: Claim, refusal: Refusal) -> Outcome:
        """The token policy gave up on the token: park the view (and, when it says so,
        every pending view of the location, until a new token is stored)."""
        resp, details = refusal.response, {}
        if resp is not None:
            details = {"http_status": resp.status, "trace_id": resp.trace_id,
                       "latency_ms": resp.latency_ms, "rate_limit": resp.rate_limit,
                       "retry_after": resp.retry_after}
        if refusal.park_location:
            parked = self.store.block_location(claim.location_id, now=self.clock())
            logger.warning("token.invalid", extra={"location_id": claim.location_id,
                                                    "http_status": details.get("http_status"),
                                                    "views_parked": parked})
        return Outcome("blocked", refusal.reason, message=refusal.message, **details)

    def _record(self, results: list[tuple[Claim, Outcome]]) -> None:
        """Record a batch of outcomes in one transaction, then log one line per attempt."""
        if not results:
            return
        now = self.clock()
        kept = self.store.record_outcomes(results, now=now)
        observe_outcomes(results, now=now)
        observe_lease("outcome_dropped", kept.count(False))  # another forwarder's now
        for (claim, outcome), lease_kept in zip(results, kept, strict=True):
            level = logging.INFO if outcome.result in ("delivered", "retry") else logging.WARNING
            logger.log(level, "delivery.attempt", extra={
                "location_id": claim.location_id, "kind": claim.kind,
                "document_id": claim.document_id, "views": claim.views,
                "outcome": outcome.outcome, "http_status": outcome.http_status,
                "attempt": claim.attempts + 1, "latency_ms": outcome.latency_ms,
                "hl_message": outcome.message, "trace_id": outcome.trace_id,
                "request_id": claim.request_id, "lease_kept": lease_kept,
            })


def run(forwarder: Forwarder, *, once: bool = False, max_batches: int | None = None,
        idle_min: float = 0.05, idle_max: float = 0.25) -> int:
    """Loop ``forward_once`` until ``forwarder.stop`` is set; return rows handled.

    Idle loops back off from ``idle_min`` to ``idle_max`` seconds and reset after work;
    a wait ends sooner when a document comes due or a rate-limit pause ends before it
    (``Forwarder.idle_wait``).
    ``once`` stops when nothing is due; ``max_batches`` after that many iterations.
    An unexpected error is logged and the loop goes on (after a pause).
    """
    with forwarder.leases.renewing():  # a thread renews the leases of the sends in flight
        return _loop(forwarder, once=once, max_batches=max_batches, idle_min=idle_min,
                     idle_max=idle_max)


def _loop(forwarder: Forwarder, *, once: bool, max_batches: int | None, idle_min: float,
          idle_max: float) -> int:
    handled, batches, idle = 0, 0, idle_min
    stop = forwarder.stop
    while not stop.is_set():
        failed = False
        try:
            count = forwarder.forward_once()
        except Exception:
            logger.exception("forwarder.error")
            count, failed = 0, True
            if once:
                raise
            stop.wait(idle_max)
        handled += count
        batches += 1
        if max_batches is not None and batches >= max_batches:
            break
        if count:
            idle = idle_min
            continue
        if once:
            break
        stop.wait(idle if failed else _idle_wait(forwarder, idle))
        idle = min(idle * 2, idle_max)
    return handled


def _idle_wait(forwarder: Forwarder, longest: float) -> float:
    """``Forwarder.idle_wait``; the whole back-off when the store cannot say (it went away
    since the claim: the loop goes on, and the next claim says so again)."""
    try:
        return forwarder.idle_wait(longest)
    except Exception:
        logger.exception("forwarder.error")
        return longest
