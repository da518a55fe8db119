"""One long-lived database connection per web process, for its group commits.

The pixel's views are written in groups (``groupcommit``): one transaction for the
requests that arrived together. Taking a pooled SQLAlchemy connection for every group
(checkout, a ping on PostgreSQL, events, reset and checkin) cost more CPU than the
group's own statements, so the process's writer keeps one DB-API connection, made by
the engine (so with its connect-time settings: WAL, busy timeout, the write-lock file),
and opens its transactions on it directly. On SQLite a transaction first takes the
write lock (``sqlite_lock``), then BEGIN IMMEDIATE; on PostgreSQL the driver begins one
with the first statement.

On SQLite the fsync that makes a commit durable is taken out of the write lock. Every
web process's writer queues on that one lock, and with ``synchronous=FULL`` each holds
it through its commit's fsync of the WAL, which on a busy machine was most of the
time it held it (2-3 ms of ~3.5 ms per group, bench/results-pixel.md). So this
connection commits with ``synchronous=NORMAL`` (the WAL is written but not synced),
releases the lock, and only then calls ``fdatasync`` on the WAL file, before its
requests are answered (``sync``). Once that returns, the transaction's WAL frames are
on disk, which is exactly what FULL's own sync at commit gives: a 202 still means the
view survives a power loss. NORMAL keeps every other sync SQLite makes: the WAL before
a checkpoint, the database after one, and the WAL header when the file is reused
(https://www.sqlite.org/pragma.html#pragma_synchronous), so a checkpoint or a reuse of
the WAL never leaves a synced transaction behind. Meanwhile the next process writes
its own group. The directory is synced once when the WAL file is first opened here, as
SQLite does for a new WAL under FULL. The engine's other connections (the forwarder,
the API's fallback writes) keep FULL.

Only one thread uses it at a time (the group's writer). After a failed transaction it is
rolled back, or dropped if that fails too (PostgreSQL restarted, say), and the next
group makes a new one. It is made in the process that uses it (gunicorn forks workers)
and closed with the engine (``engine.dispose()``). ~90 lines: SQLAlchemy's pool does
the rest of the service's connections.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .sqlite_lock import begin_write


class WriteConnection:
    """A transaction at a time on one dedicated DB-API connection."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._sqlite = engine.dialect.name == "sqlite"
        self._dbapi_error = engine.dialect.loaded_dbapi.Error
        self._fairy = None  # the engine's connection, detached from its pool
        self._pid = 0
        self._wal_fd = -1  # SQLite file databases: the WAL, synced after each commit
        sa.event.listen(engine, "engine_disposed", self._on_dispose)

    @contextlib.contextmanager
    def begin(self) -> Iterator:
        """A cursor inside a new transaction, committed when the block ends."""
        raw = self._connection()
        try:
            if self._sqlite:
                begin_write(raw)
            cursor = raw.cursor()
            yield cursor
            cursor.close()
            raw.commit()  # on SQLite this also releases the write lock
        except self._dbapi_error as exc:
            self._abort(raw)
            raise sa.exc.DBAPIError.instance(None, None, exc, self._dbapi_error) from exc
        except BaseException:
            self._abort(raw)
            raise

    def sync(self) -> None:
        """Make the transactions committed by ``begin`` durable (SQLite: fdatasync the
        WAL, outside the write lock); OperationalError if the disk says it failed."""
        if self._wal_fd >= 0 and self._pid == os.getpid():
            try:
                _fdatasync(self._wal_fd)
            except OSError as exc:  # the disk failed: the store is unavailable (503)
                raise sa.exc.OperationalError("fdatasync(<database>-wal)", None, exc) from exc

    def _connection(self):
        if self._fairy is not None and self._pid != os.getpid():
            # The parent's, inherited by a fork: leave them to the parent.
            self._fairy, self._wal_fd = None, -1
        if self._fairy is None:
            fairy = self.engine.raw_connection()
            fairy.detach()  # ours until closed: never handed to another thread
            raw = fairy.dbapi_connection
            try:
                if self._sqlite and hasattr(raw, "lock_for_write"):  # a database file
                    raw.execute("SELECT count(*) FROM sqlite_master").fetchall()  # opens the WAL
                    # SQLite deletes the WAL only when the database's last connection
                    # closes, and this one stays open: this fd is the WAL until close().
                    self._wal_fd = _open_synced(self.engine.url.database + "-wal")
                    raw.execute("PRAGMA synchronous=NORMAL")  # synced by ``sync`` instead
            except BaseException:
                fairy.close()  # never a NORMAL connection without its WAL to sync
                if self._wal_fd >= 0:
                    os.close(self._wal_fd)
                    self._wal_fd = -1
                raise
            self._fairy, self._pid = fairy, os.getpid()
        return self._fairy.dbapi_connection

    def _abort(self, raw) -> None:
        try:
            raw.rollback()  # on SQLite this also releases the write lock
        except self._dbapi_error:
            self.close()  # broken: the next transaction opens a new connection

    def _on_dispose(self, _engine) -> None:
        self.close()

    def close(self) -> None:
        fairy, self._fairy = self._fairy, None
        wal_fd, self._wal_fd = self._wal_fd, -1
        if self._pid == os.getpid():
            if fairy is not None:
                fairy.close()  # detached: this closes the DB-API connection
            if wal_fd >= 0:
                os.close(wal_fd)


_fdatasync = getattr(os, "fdatasync", os.fsync)  # macOS has only fsync, as SQLite uses


def _open_synced(path: str) -> int:
    """Open ``path`` and sync its directory (as SQLite does for a new WAL under FULL),
    so that the file itself survives a power loss once its data is synced."""
    fd = os.open(path, os.O_RDONLY)
    directory = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return fd
