"""The group commits' own connection: on SQLite the WAL is synced after the write lock."""

from __future__ import annotations

import errno
import os
import shutil

import pytest
import sqlalchemy as sa

from service.store import write_connection
from service.store.db import events
from service.store.engine import create_engine
from service.store.queue import Store

from .conftest import T0, make_view
from .test_groupcommit import run_concurrently
from .test_sqlite_writelock import lock_is_free


@pytest.fixture
def sqlite_store(sqlite_template, tmp_path):
    path = tmp_path / "relay.db"
    shutil.copy(sqlite_template, path)
    engine = create_engine(f"sqlite:///{path}")
    yield Store(engine, group_commit=True), str(path)
    engine.dispose()


@pytest.fixture
def syncs(monkeypatch):
    """Every fdatasync of the write connection: (file synced, write lock free then).

    The module's ``_fdatasync`` is replaced, not a public function: it is the system
    call itself (the OS boundary), and when it runs relative to the write lock, or a
    disk that refuses it, is visible nowhere else."""
    calls, real = [], write_connection._fdatasync

    def spy(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        calls.append((path, lock_is_free(path.removesuffix("-wal") + ".writelock")))
        return real(fd)

    monkeypatch.setattr(write_connection, "_fdatasync", spy)
    return calls


def count_events(store) -> int:
    with store.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(events)).scalar()


def test_each_group_syncs_the_wal_after_releasing_the_write_lock(sqlite_store, syncs):
    store, path = sqlite_store
    results, errors = run_concurrently(
        lambda i: store.record_views([make_view(document_id=f"inv_{i}")], now=T0), 12)
    assert errors == [None] * 12
    assert count_events(store) == 12
    # One sync per group transaction (at least one, at most one per request), each of
    # the WAL file, each taken once the lock was free for the next writer.
    assert 1 <= len(syncs) <= 12
    assert syncs == [(os.path.realpath(path) + "-wal", True)] * len(syncs)


def test_only_the_group_connection_commits_without_its_own_sync(sqlite_store, syncs):
    """NORMAL on the connection whose commits ``sync`` makes durable; FULL everywhere else
    (the forwarder, the API's fallback writes). That the store's group commits take this
    connection is shown by its syncs (test_each_group_syncs_the_wal_...)."""
    store, _ = sqlite_store
    store.record_views([make_view()], now=T0)
    connection = write_connection.WriteConnection(store.engine)
    with connection.begin() as cursor:
        cursor.execute("PRAGMA synchronous")
        assert cursor.fetchone() == (1,)  # NORMAL
    connection.sync()
    assert len(syncs) == 2  # the store's group, then this one: each synced by ``sync``
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    connection.close()


def test_a_failed_sync_fails_its_requests_and_writes_nothing_twice(sqlite_store,
                                                                   monkeypatch):
    """The group committed but the disk refused the sync: each request gets the store's
    error (503 on the API, a logged failure on the pixel) and its views are not written
    a second time by the one-by-one fallback; the next group syncs again."""
    store, _ = sqlite_store
    failing = {"on": True}
    real = write_connection._fdatasync  # the system call: see ``syncs``

    def flaky(fd):
        if failing["on"]:
            raise OSError(errno.EIO, "Input/output error")
        return real(fd)

    monkeypatch.setattr(write_connection, "_fdatasync", flaky)
    with pytest.raises(sa.exc.OperationalError) as raised:
        store.record_views([make_view(document_id="inv_a")], now=T0)
    assert isinstance(raised.value.orig, OSError)
    assert count_events(store) == 1  # committed once, not rewritten
    failing["on"] = False
    [answer] = store.record_views([make_view(document_id="inv_b")], now=T0)
    assert answer.status == "queued"
    assert count_events(store) == 2


def test_a_memory_database_has_no_wal_to_sync(syncs):
    engine = create_engine("sqlite://")
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        connection = write_connection.WriteConnection(engine)
        with connection.begin() as cursor:
            cursor.execute("SELECT 1")
        connection.sync()
        assert syncs == []
        connection.close()
    finally:
        engine.dispose()
