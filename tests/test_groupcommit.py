"""Group commit: concurrent requests share transactions; one bad request fails alone."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from service.db import events
from service.store import Store

from .conftest import T0, make_view


@pytest.fixture
def grouped(services):
    return Store(services.engine, group_commit=True)


def run_concurrently(fn, n):
    results, errors, start = [None] * n, [None] * n, threading.Barrier(n)

    def worker(i):
        start.wait()
        try:
            results[i] = fn(i)
        except Exception as exc:  # collected and asserted by the caller
            errors[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results, errors


def count_commits(engine):
    commits = []
    sa.event.listen(engine, "commit", lambda conn: commits.append(1))
    return commits


def test_concurrent_requests_are_all_stored_in_fewer_commits(grouped):
    commits = count_commits(grouped.engine)
    results, errors = run_concurrently(
        lambda i: grouped.record_views([make_view(document_id=f"inv_{i}")] * 3, now=T0), 24)
    assert errors == [None] * 24
    assert all(len(r) == 3 and {a.status for a in r} == {"queued"} for r in results)
    assert len({a.id for r in results for a in r}) == 72
    with grouped.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(events)).scalar() == 72
    assert grouped.queue_depth() == {"pending": 24}
    assert 1 <= len(commits) < 24  # shared: one fsync served several requests


def test_a_bad_request_fails_alone(grouped):
    def record(i):
        view = make_view(document_id=f"inv_{i}", viewed_at=None if i == 3 else T0)
        return grouped.record_views([view], now=T0)

    results, errors = run_concurrently(record, 8)
    assert isinstance(errors[3], sa.exc.IntegrityError)
    assert [e for i, e in enumerate(errors) if i != 3] == [None] * 7
    assert grouped.queue_depth() == {"pending": 7}


def test_one_event_id_from_two_requests_is_stored_once(grouped):
    results, errors = run_concurrently(
        lambda i: grouped.record_views([make_view(event_key="evt-same")], now=T0), 6)
    assert errors == [None] * 6
    statuses = sorted(r[0].status for r in results)
    assert statuses == ["duplicate"] * 5 + ["queued"]
    assert len({r[0].id for r in results}) == 1


def test_the_writer_hands_over_and_nobody_waits_forever():
    """Many threads, many rounds, a slow "commit": every call returns its own result,
    and a request that wrote its own group does not stay on to write later ones."""
    import contextlib
    import time

    from service.groupcommit import GroupCommitter

    groups = []

    def write(conn, views, now):
        return [f"stored:{v}" for v in views]

    @contextlib.contextmanager
    def begin():
        time.sleep(0.002)  # a commit takes a while, so groups form
        groups.append(threading.get_ident())
        yield None

    committer = GroupCommitter(begin, write, lambda views, now: write(None, views, now))
    writes_by = {}

    def worker(i):
        for round_ in range(20):
            assert committer.submit([f"{i}-{round_}"], now=T0) == [f"stored:{i}-{round_}"]
        return threading.get_ident()

    results, errors = run_concurrently(worker, 16)
    assert errors == [None] * 16
    for ident in groups:
        writes_by[ident] = writes_by.get(ident, 0) + 1
    assert len(groups) < 16 * 20  # groups formed
    assert len(writes_by) > 1  # the pen was handed over between threads
