"""Group commit: the views of concurrent requests in one process share one transaction.

On SQLite every commit is an fsync under one write lock (synchronous=FULL), so one
transaction per pixel request caps the whole machine at one fsync per view. Here a
request hands its views over and waits; whichever request finds no writer running
becomes the writer (no extra thread to manage across gunicorn's fork), commits every
view queued by then in ONE transaction, wakes their requests, and repeats while more
arrived. A request still returns only after the transaction holding its views has
committed, so a 202 (or the pixel's GIF) still means the view is durable.

If a group's transaction fails (a constraint race, say), each request of the group is
written again on its own, so one bad request never fails the others. No well-kept
library does this for SQLAlchemy; it is ~60 lines, so it is written here.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Job:
    views: Sequence[Any]
    now: dt.datetime
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class GroupCommitter:
    """Batch ``write(conn, views, now)`` calls of concurrent threads into shared commits."""

    def __init__(self, begin: Callable, write: Callable, write_alone: Callable, *,
                 max_views: int = 2000):
        self.begin = begin  # () -> context manager yielding a connection in a transaction
        self.write = write  # (conn, views, now) -> result, inside the shared transaction
        self.write_alone = write_alone  # (views, now) -> result, its own transaction(s)
        self.max_views = max_views
        self._lock = threading.Lock()
        self._queue: list[_Job] = []
        self._writing = False

    def submit(self, views: Sequence[Any], *, now: dt.datetime) -> Any:
        """Write ``views`` durably (together with any others waiting); return the result."""
        job = _Job(views, now)
        with self._lock:
            self._queue.append(job)
            lead = not self._writing
            if lead:
                self._writing = True
        if lead:
            self._drain()
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._writing = False
                    return
                group, size = [], 0
                while self._queue and (not group or size + len(self._queue[0].views)
                                       <= self.max_views):
                    job = self._queue.pop(0)
                    group.append(job)
                    size += len(job.views)
            self._commit(group)

    def _commit(self, group: list[_Job]) -> None:
        try:
            try:
                with self.begin() as conn:
                    results = [self.write(conn, job.views, job.now) for job in group]
            except Exception:  # each job is written again on its own just below
                results = None
            for i, job in enumerate(group):
                if results is not None:
                    job.result = results[i]
                    continue
                try:
                    job.result = self.write_alone(job.views, job.now)
                except Exception as exc:  # re-raised in the job's own thread
                    job.error = exc
        finally:
            for job in group:  # whatever happened, nobody waits forever
                if job.result is None and job.error is None:
                    job.error = RuntimeError("group commit was interrupted")
                job.done.set()
