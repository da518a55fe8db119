"""SQLite writers queue on a lock file (service.store.sqlite_lock), not in busy-handler naps."""

from __future__ import annotations

import fcntl
import multiprocessing
import os

import pytest
import sqlalchemy as sa

from service.store.engine import create_engine, read_only


def lock_is_free(path: str) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing drops a lock this probe took
    return True


@pytest.fixture
def sqlite_engine(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path}/relay.db")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    yield engine, f"{tmp_path}/relay.db.writelock"
    engine.dispose()


def test_a_write_transaction_holds_the_lock_until_it_ends(sqlite_engine):
    engine, lock = sqlite_engine
    assert lock_is_free(lock)
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        assert not lock_is_free(lock)
    assert lock_is_free(lock)  # released after the commit
    with pytest.raises(RuntimeError), engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO t VALUES (2)")
        raise RuntimeError("roll back")
    assert lock_is_free(lock)  # and after a rollback
    with read_only(engine) as conn:  # readers never take it
        conn.exec_driver_sql("SELECT count(*) FROM t")
        assert lock_is_free(lock)
        conn.rollback()


def _writer(url: str, n: int) -> None:
    engine = create_engine(url)
    for i in range(n):
        with engine.begin() as conn:
            conn.exec_driver_sql(f"INSERT INTO t VALUES ({i})")
    engine.dispose()


def test_writers_in_several_processes_all_get_through(sqlite_engine, tmp_path):
    engine, _ = sqlite_engine
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(f"sqlite:///{tmp_path}/relay.db", 100))
             for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * 4
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM t")).scalar() == 400
