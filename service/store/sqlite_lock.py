"""SQLite's writers queue on a lock file instead of napping in its busy handler.

The one protocol every SQLite write transaction follows (``begin_write``): take the lock
file, then BEGIN IMMEDIATE; commit or rollback releases the lock.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3


def begin_write(raw, execute=None) -> None:
    """Open a write transaction on the sqlite3 connection ``raw``: its lock file first (a
    database file's connection has one, ``locking_connection``), then BEGIN IMMEDIATE
    (through ``execute`` when given: SQLAlchemy's, inside its ``begin`` event). If BEGIN
    fails, the lock is given back before the error goes up."""
    lock = getattr(raw, "lock_for_write", None)
    if lock is not None:
        lock()
    try:
        (execute or raw.execute)("BEGIN IMMEDIATE")
    except BaseException:
        if lock is not None:
            raw.unlock_for_write()
        raise


def locking_connection(lock_path: str) -> type[sqlite3.Connection]:
    """A sqlite3 connection class whose write transactions queue on a lock file first.

    SQLite lets one writer in at a time; a writer that finds the database locked sleeps
    in its busy handler (1, 2, 5 ... 100 ms naps) and retries, so writers in several
    processes (gunicorn workers, forwarders) lose most of their time napping, and a
    request can wait for seconds. Writers here first take an exclusive ``flock`` on
    ``<database>.writelock``, which blocks in the kernel and wakes the next writer the
    moment the last one commits; BEGIN IMMEDIATE then finds the database free. The
    kernel drops the lock if a process dies. (~30 lines: no library does this.)
    """

    class LockingConnection(sqlite3.Connection):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            self._locked = False

        def lock_for_write(self) -> None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)  # releases the GIL while it waits
            self._locked = True

        def unlock_for_write(self) -> None:
            if self._locked:
                self._locked = False
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

        def commit(self) -> None:
            try:
                super().commit()
            finally:
                self.unlock_for_write()

        def rollback(self) -> None:
            try:
                super().rollback()
            finally:
                self.unlock_for_write()

        def close(self) -> None:
            try:
                super().close()
            finally:
                self._locked = False
                if self._lock_fd >= 0:
                    os.close(self._lock_fd)  # also releases the lock
                    self._lock_fd = -1

    return LockingConnection
