"""One long-lived database connection per web process, for its group commits.

The pixel's views are written in groups (``groupcommit``): one transaction for the
requests that arrived together. Taking a pooled SQLAlchemy connection for every group
(checkout, a ping on PostgreSQL, events, reset and checkin) cost more CPU than the
group's own statements, so the process's writer keeps one DB-API connection, made by
the engine (so with its connect-time settings: WAL, busy timeout, the write-lock file),
and opens its transactions on it directly. On SQLite a transaction first takes the
write lock (``sqlite_lock``), then BEGIN IMMEDIATE; on PostgreSQL the driver begins one
with the first statement.

Only one thread uses it at a time (the group's writer). After a failed transaction it is
rolled back, or dropped if that fails too (PostgreSQL restarted, say), and the next
group makes a new one. It is made in the process that uses it (gunicorn forks workers)
and closed with the engine (``engine.dispose()``). ~60 lines: SQLAlchemy's pool does
the rest of the service's connections.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Engine


class WriteConnection:
    """A transaction at a time on one dedicated DB-API connection."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._sqlite = engine.dialect.name == "sqlite"
        self._dbapi_error = engine.dialect.loaded_dbapi.Error
        self._fairy = None  # the engine's connection, detached from its pool
        self._pid = 0
        sa.event.listen(engine, "engine_disposed", self._on_dispose)

    @contextlib.contextmanager
    def begin(self) -> Iterator:
        """A cursor inside a new transaction, committed when the block ends."""
        raw = self._connection()
        try:
            if self._sqlite:
                if hasattr(raw, "lock_for_write"):  # a database file (not :memory:)
                    raw.lock_for_write()
                raw.execute("BEGIN IMMEDIATE")
            cursor = raw.cursor()
            yield cursor
            cursor.close()
            raw.commit()
        except self._dbapi_error as exc:
            self._abort(raw)
            raise sa.exc.DBAPIError.instance(None, None, exc, self._dbapi_error) from exc
        except BaseException:
            self._abort(raw)
            raise

    def _connection(self):
        if self._fairy is not None and self._pid != os.getpid():
            self._fairy = None  # the parent's, inherited by a fork: leave it to the parent
        if self._fairy is None:
            fairy = self.engine.raw_connection()
            fairy.detach()  # ours until closed: never handed to another thread
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
        if fairy is not None and self._pid == os.getpid():
            fairy.close()  # detached: this closes the DB-API connection
