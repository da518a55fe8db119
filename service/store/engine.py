"""The engine for SQLite or PostgreSQL, reads without the write lock, and migrations."""

from __future__ import annotations

import functools
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from .sqlite_lock import begin_write, locking_connection

MIGRATIONS = Path(__file__).parent / "migrations"


def dialect_insert(table: sa.Table, dialect: str):
    """An INSERT that supports ON CONFLICT on both stores (PostgreSQL and SQLite)."""
    from sqlalchemy.dialects import postgresql, sqlite

    return (postgresql if dialect == "postgresql" else sqlite).insert(table)


def create_engine(url: str) -> Engine:
    """Create the engine: SQLite in WAL mode with a busy timeout, or PostgreSQL via psycopg.

    A failed statement's error never quotes its values (``hide_parameters``; on PostgreSQL
    also the server's DETAIL, which quotes the failing row): they can be a token's
    ciphertext, and errors end up in logs.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        engine = sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10,
                                  hide_parameters=True)

        @sa.event.listens_for(engine, "handle_error")
        def _without_detail(context):
            # "Failing row contains (loc_1, pit, gAAAAAB...)", "Key (...)=(...) already
            # exists": keep the primary message (it names the column or constraint).
            orig = context.original_exception
            diag = getattr(orig, "diag", None)
            if diag is None or not diag.message_detail:
                return
            quoted = str(orig)
            orig.args = (f"{diag.message_primary} (DETAIL hidden: it may quote values)",)
            wrapped = context.sqlalchemy_exception
            if wrapped is not None and wrapped.args and isinstance(wrapped.args[0], str):
                wrapped.args = (wrapped.args[0].replace(quoted, str(orig)),)

        return engine
    connect_args: dict = {"timeout": 30}
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        connect_args["factory"] = locking_connection(f"{parsed.database}.writelock")
    engine = sa.create_engine(url, connect_args=connect_args, hide_parameters=True)

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        # Let SQLAlchemy, not pysqlite, emit BEGIN, so it can be BEGIN IMMEDIATE:
        # a deferred transaction that later writes can fail with "database is
        # locked" without waiting; IMMEDIATE takes the write lock up front and
        # waits for it (busy_timeout), which also serialises claims.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")  # a 202 means the view survives power loss
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn):
        # Reads (see ``read_only``) need no write lock under WAL.
        if conn.get_execution_options().get("read_only", False):
            conn.exec_driver_sql("BEGIN")
            return
        begin_write(conn.connection.dbapi_connection, conn.exec_driver_sql)

    return engine


def read_only(engine: Engine) -> sa.Connection:
    """Open a connection for reads only (on SQLite: a deferred, lock-free transaction)."""
    return engine.connect().execution_options(read_only=True)


def alembic_config(engine: Engine):
    """Alembic config pointing at our migrations and sharing ``engine``."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Create or migrate the schema to ``revision``."""
    from alembic import command

    command.upgrade(alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    """The schema revision the store is at (None if never migrated)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@functools.cache
def head_revision() -> str:
    """The newest revision this code knows (read from the scripts once per process)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(None)).get_current_head()


@functools.cache
def known_revisions() -> frozenset[str]:
    """Every revision this code's migration scripts define, head included (read once).

    A store at a revision outside this set was migrated by a newer release."""
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(alembic_config(None))
    return frozenset(script.revision for script in scripts.walk_revisions())
