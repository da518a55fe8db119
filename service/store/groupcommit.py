"""Group commit: the views of concurrent requests in one process share one transaction.

On SQLite every commit is an fsync under one write lock (synchronous=FULL), so one
transaction per pixel request caps the whole machine at one fsync per view. Here a
request hands its views over and waits; whichever request finds no writer running
becomes the writer (no extra thread to manage across gunicorn's fork), opens a
transaction, which on SQLite first waits for the write lock, takes every view queued by
then (all that arrived while it waited) into that ONE transaction, commits, and wakes
their requests; once its own views are written it hands the writing to the next waiting
request. A request still returns only after the transaction holding its views has
committed, so a 202 (or the pixel's GIF) still means the view is durable.

If a group's transaction fails (a constraint race, say), each request of the group is
written again on its own, so one bad request never fails the others. A ``sync`` step,
when given, runs after the commit and before the group is answered: on SQLite the WAL's
fdatasync, taken out of the write lock (``write_connection``). If it fails, the group
is committed but not known to be durable: each of its requests gets the error and
nothing is written again (that would store its views twice). No well-kept library does
this for SQLAlchemy; it is ~70 lines, so it is written here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def _held_lock() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


@dataclass
class _Job:
    item: Any  # what the request hands over (its prepared views)
    size: int
    # Held from the start; released (once per wait) to wake the job's thread. A bare
    # lock costs less than an Event's condition variable, on every request.
    wake: threading.Lock = field(default_factory=_held_lock)
    finished: bool = False
    lead: bool = False  # set, with wake, when this job's thread is to write next
    result: Any = None
    error: BaseException | None = None


class GroupCommitter:
    """Batch the writes of concurrent threads into shared commits."""

    def __init__(self, begin: Callable, write_group: Callable, write_alone: Callable, *,
                 sync: Callable | None = None, max_views: int = 2000):
        self.begin = begin  # () -> context manager: a transaction (and its write lock)
        self.write_group = write_group  # (conn, [item, ...]) -> [result, ...], inside it
        self.write_alone = write_alone  # item -> result, in its own transaction(s)
        self.sync = sync  # () -> None: makes what ``begin`` committed durable
        self.max_views = max_views
        self._lock = threading.Lock()
        self._queue: list[_Job] = []
        self._writing = False

    def submit(self, item: Any, *, size: int = 1) -> Any:
        """Write ``item`` (``size`` views) durably, with any others waiting; its result."""
        job = _Job(item, size)
        with self._lock:
            self._queue.append(job)
            elected = not self._writing
            if elected:
                self._writing = job.lead = True
        if elected:  # (not job.lead: a handover may already have set it, see below)
            self._lead(job)
        # Every release of ``wake`` (the pen handed over, or the job written) is consumed
        # by one acquire here, even when this thread sees the news before it waits: a
        # handover that landed early must not leave the lock released, or the group's
        # end would release it again (RuntimeError, and the group's later waiters and
        # every later request of the process would wait forever).
        while not job.finished:
            job.wake.acquire()
            if job.lead and not job.finished:
                self._lead(job)
        if job.error is not None:
            raise job.error
        return job.result

    def _lead(self, own: _Job) -> None:
        """Commit groups until ``own`` is written, then hand the pen to the next waiter.

        The writer stops after its own group, so under steady load no request keeps
        writing other requests' views while its own answer waits.
        """
        while not own.finished:
            self._commit()
        with self._lock:
            if self._queue:
                successor = self._queue[0]
                successor.lead = True
                successor.wake.release()
            else:
                self._writing = False

    def _take(self) -> list[_Job]:
        with self._lock:
            group, size = [], 0
            while self._queue and (not group or size + self._queue[0].size <= self.max_views):
                job = self._queue.pop(0)
                group.append(job)
                size += job.size
        return group

    def _settle(self, group: list[_Job], results: list) -> None:
        """The group's transaction committed: sync it, then give each job its result."""
        try:
            if self.sync is not None:
                self.sync()
        except Exception as exc:  # committed, durability unknown: an error for each job
            for job in group:
                job.error = exc
            return
        for job, result in zip(group, results, strict=True):
            job.result = result

    def _commit(self) -> None:
        """Open a transaction, THEN take the queue: on SQLite, opening waits for the write
        lock (other processes' commits), and every request that arrives meanwhile joins."""
        group: list[_Job] = []
        try:
            try:
                with self.begin() as conn:
                    group = self._take()
                    results = self.write_group(conn, [job.item for job in group])
            except Exception:  # each job is written again on its own just below
                results = None
                group = group or self._take()
            if results is not None:
                self._settle(group, results)
                return
            for job in group:
                try:
                    job.result = self.write_alone(job.item)
                except Exception as exc:  # re-raised in the job's own thread
                    job.error = exc
        finally:
            for job in group:  # whatever happened, nobody waits forever
                if job.result is None and job.error is None:
                    job.error = RuntimeError("group commit was interrupted")
                job.finished = True
                job.wake.release()
