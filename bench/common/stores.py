"""The store a run uses: a fresh SQLite file or PostgreSQL schema."""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from pathlib import Path

from .processes import OUT


class Store:
    """A fresh, empty database for one run: a SQLite file, or a PostgreSQL database."""

    def __init__(self, backend: str, url: str, cleanup):
        self.backend, self.url, self._cleanup = backend, url, cleanup
        self._engine = None

    @property
    def engine(self):
        import sqlalchemy as sa

        if self._engine is None:
            self._engine = sa.create_engine(_sa_url(self.url))
        return self._engine

    def scalar(self, sql: str):
        import sqlalchemy as sa

        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql)).scalar()

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        self._cleanup()


def _sa_url(url: str) -> str:
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


@contextmanager
def fresh_store(backend: str, label: str, *, pg_url: str, keep: bool = False):
    """Yield a ``Store`` on a new SQLite file under bench/out, or a new PostgreSQL database."""
    tag = f"{label}_{uuid.uuid4().hex[:8]}"
    if backend == "sqlite":
        OUT.mkdir(parents=True, exist_ok=True)
        path = OUT / f"{tag}.db"

        def cleanup():
            if not keep:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)

        store = Store(backend, f"sqlite:///{path}", cleanup)
    elif backend == "postgresql":
        import sqlalchemy as sa
        from sqlalchemy.engine import make_url

        admin_url = make_url(_sa_url(pg_url))
        name = f"bench_{tag}"
        admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        url = admin_url.set(database=name).render_as_string(hide_password=False)

        def cleanup():
            if not keep:
                with admin.connect() as conn:
                    conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.dispose()

        store = Store(backend, url, cleanup)
    else:
        raise ValueError(f"unknown backend {backend!r}")
    try:
        yield store
    finally:
        store.close()


def postgres_reachable(pg_url: str) -> str | None:
    """None if PostgreSQL answers at ``pg_url``, else why not."""
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(_sa_url(pg_url), connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        engine.dispose()
        return None
    except Exception as exc:  # noqa: BLE001 - reported, and the backend is skipped
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
