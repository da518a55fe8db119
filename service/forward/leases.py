"""The leases a forwarder holds, renewed while it works (huey's ``loop(now)`` seam).

A claim leases each document for ``LEASE_SECONDS`` (``documents.claim``). While the
forwarder's sends are in flight, ``loop(now)`` renews every lease it holds once a third of
the lease has passed since they were last renewed, in one statement for all of them
(``documents.renew``, which renews only rows whose lease token is still this forwarder's).
So a slow HighLevel never lets a live forwarder's documents be taken and sent twice, and a
dead forwarder's documents come due again at most ``LEASE_SECONDS`` after its last renewal.

A send starts only while its lease surely holds (``holds``): never within ``margin`` (a
third of the lease) of the lease's end by this process's clock, and never for a row a
renewal found taken. A forwarder that cannot renew (store unreachable) or that lost a row
(its lease ended and another forwarder claimed it) gives that work up unsent; only sends
already in flight can then reach HighLevel twice, and a late outcome is dropped
(``documents.apply_outcomes`` is conditional on the lease token).

``renewing()`` calls ``loop`` from a background thread while ``forwarder.run`` works; tests
call ``loop(now)`` with their own clock instead, with no thread and no sleep.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterable, Iterator

from sqlalchemy.exc import SQLAlchemyError

from ..metrics import observe_lease
from ..store.queue import Claim, Store

logger = logging.getLogger(__name__)

TICK_SECONDS = 0.5  # how often the renewer thread looks at the clock (or a quarter lease)


class Leases:
    """The leases one forwarder holds, by lease token (one per claimed batch): the rows
    still held under it and when its lease ends."""

    def __init__(self, store: Store, *, clock: Callable[[], dt.datetime]):
        self.store = store
        self.clock = clock
        self.lease = store.lease
        self.every = self.lease / 3  # renew this long after the last renewal (or the claim)
        self.margin = self.lease / 3  # a send never starts this close to its lease's end
        self._lock = threading.Lock()
        self._rows: dict[str, set[int]] = {}  # lease token -> row ids still held
        self._until: dict[str, dt.datetime] = {}  # lease token -> when its lease ends
        self._failing = False  # the last renewal round failed (logged once per outage)

    @contextlib.contextmanager
    def holding(self, claims: list[Claim]) -> Iterator[None]:
        """Hold ``claims`` (just claimed) for the block: renewed by ``loop`` until it ends,
        however it ends (outcomes recorded, released, or an error)."""
        with self._lock:
            for claim in claims:
                self._rows.setdefault(claim.lease_token, set()).add(claim.row_id)
                until = claim.locked_until or self.clock()  # unknown: no time left
                self._until[claim.lease_token] = min(until, self._until.get(
                    claim.lease_token, until))
        try:
            yield
        finally:
            self._forget(claims)

    def _forget(self, claims: Iterable[Claim]) -> None:
        with self._lock:
            for claim in claims:
                rows = self._rows.get(claim.lease_token)
                if rows is None:
                    continue
                rows.discard(claim.row_id)
                if not rows:
                    del self._rows[claim.lease_token]
                    self._until.pop(claim.lease_token, None)

    def holds(self, claim: Claim, *, now: dt.datetime | None = None) -> bool:
        """Whether ``claim``'s send may start: its row is still held and its lease ends more
        than ``margin`` after ``now``. If not, log and count it as given up."""
        now = now or self.clock()
        with self._lock:
            held = claim.row_id in self._rows.get(claim.lease_token, ())
            until = self._until.get(claim.lease_token)
        if held and until is not None and now < until - self.margin:
            return True
        logger.warning("lease.given_up", extra={
            "location_id": claim.location_id, "kind": claim.kind,
            "document_id": claim.document_id, "reason": "ending" if held else "taken"})
        observe_lease("given_up")
        return False

    def due(self, now: dt.datetime) -> bool:
        """Whether a renewal round is due at ``now``: some lease was last renewed (or
        claimed) ``every`` ago or more."""
        with self._lock:
            return any(until - self.lease + self.every <= now for until in self._until.values())

    def loop(self, now: dt.datetime) -> bool:
        """One iteration: if a renewal is due at ``now``, renew every lease held, in one
        statement; return whether a round ran. A failed round keeps the old ends (``holds``
        then lets no send start near them) and is tried again at the next call."""
        if not self.due(now):
            return False
        with self._lock:
            tokens = list(self._until)
        try:
            kept = self.store.renew_leases(tokens, now=now)
        except SQLAlchemyError as exc:
            if not self._failing:
                logger.warning("lease.renew_failed", extra={
                    "error": type(exc).__name__, "leases": len(tokens)})
            self._failing = True
            observe_lease("renew_failed")
            return True
        if self._failing:
            logger.info("lease.renewed_again", extra={"leases": len(tokens)})
        self._failing = False
        with self._lock:
            for token in tokens:
                rows = self._rows.get(token)
                if rows is None:  # recorded (or released) while the statement ran
                    continue
                rows &= kept  # the others are no longer ours: their sends must not start
                self._until[token] = now + self.lease
        observe_lease("renewed")
        return True

    @contextlib.contextmanager
    def renewing(self) -> Iterator[None]:
        """Run ``loop`` from a background thread until the block ends (a forwarder's run,
        shutdown included: sends finishing after SIGTERM keep their leases)."""
        done = threading.Event()
        tick = min(TICK_SECONDS, self.every.total_seconds() / 4)
        thread = threading.Thread(target=self._renew_until, args=(done, tick),
                                  name="leases", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join(timeout=10)

    def _renew_until(self, done: threading.Event, tick: float) -> None:
        while not done.wait(tick):
            try:
                self.loop(self.clock())
            except Exception:  # a bug must not stop renewals silently: log it, go on
                logger.exception("lease.renewer_error")
