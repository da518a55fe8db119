"""The relay's side of a run: tokens, counts, waits, its processes, a backlog."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from contextlib import contextmanager
from types import SimpleNamespace

from .processes import Process, flask, start, wait_for, web_server
from .stores import Store

# -- the relay's side ---------------------------------------------------------------------

def put_tokens(base_url: str, admin_key: str, tokens: dict[str, str]) -> None:
    """Store each location's token through the admin API (``PUT /v1/locations/<id>/token``)."""
    import json

    for location, token in tokens.items():
        req = urllib.request.Request(
            f"{base_url}/v1/locations/{location}/token", method="PUT",
            data=json.dumps({"accessToken": token}).encode(),
            headers={"Authorization": f"Bearer {admin_key}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            if resp.status != 200:
                raise RuntimeError(f"PUT token for {location}: HTTP {resp.status}")


def event_counts(store: Store) -> dict[str, int]:
    """Views stored (a client's repeats count on one row: ``events.views``), those to
    forward, and those HighLevel has been told of (the store's
    own rule, as ``GET /v1/events/<id>`` answers ``delivered``: seq <= the document's
    sent_seq)."""
    import sqlalchemy as sa

    with store.engine.connect() as conn:
        row = conn.execute(sa.text(
            "SELECT coalesce(sum(e.views), 0), "
            "       coalesce(sum(CASE WHEN e.forward THEN e.views ELSE 0 END), 0), "
            "       coalesce(sum(CASE WHEN e.forward AND e.seq <= d.sent_seq "
            "                    THEN e.views ELSE 0 END), 0) "
            "FROM events e LEFT JOIN documents d ON d.id = e.document_row")).one()
    return {"stored": int(row[0]), "forward": int(row[1]), "delivered": int(row[2])}


def wait_delivered(store: Store, *, timeout: float, poll: float = 0.5,
                   alive=lambda: True) -> tuple[dict[str, int], float | None]:
    """Poll until every view to forward is delivered; return the counts and when
    (``time.monotonic()``), or None on timeout or when ``alive()`` turns false."""
    deadline = time.monotonic() + timeout
    while True:
        counts = event_counts(store)
        if counts["delivered"] >= counts["forward"]:
            return counts, time.monotonic()
        if time.monotonic() >= deadline or not alive():
            return counts, None
        time.sleep(poll)


@contextmanager
def relay_processes(store: Store, keys: dict[str, str], *, label: str, highlevel_url: str,
                    workers: int, threads: int, tokens: dict[str, str] | None = None,
                    **extra: str):
    """The relay as the Procfile runs it, on ``store``: ``db upgrade``, gunicorn on a free
    loopback port (``web_server``), each location's token stored through the admin API,
    then one forwarder sending to ``highlevel_url`` (waited for until it logs
    ``forwarder.started``). Yields an object with ``port``, ``url``, ``web`` and
    ``forwarder`` (``Process``); stops the forwarder, then gunicorn (SIGTERM, bounded)."""
    with web_server(f"{label}-gunicorn", store, keys, workers=workers, threads=threads,
                    HIGHLEVEL_BASE_URL=highlevel_url, **extra) as server:
        put_tokens(server.url, keys["ADMIN_API_KEYS"].split(",")[0], tokens or {})
        fwd = start(f"{label}-forwarder", flask("forwarder"), server.env)
        try:
            def started() -> bool:
                assert fwd.running(), f"forwarder exited:\n{fwd.tail()}"
                return "forwarder.started" in fwd.stdout()

            wait_for(started, timeout=60, what="forwarder.started")
            yield SimpleNamespace(port=server.port, url=server.url, web=server.web,
                                  forwarder=fwd)
        finally:
            fwd.stop()


# -- a backlog for the forwarder ----------------------------------------------------------

def preload_backlog(store: Store, keys: dict[str, str], *, locations: int, documents: int,
                    token: Callable[[int], str]) -> None:
    """Store location n's token ``token(n)`` with the service's ``TokenVault`` and one due
    view for each of ``documents`` documents (every tenth an estimate, locations
    interleaved, as traffic would be) with ``Store.record_views``, in this process; fail
    unless exactly that many documents are then due."""
    import datetime as dt

    from service.store.engine import create_engine
    from service.store.queue import Store as Queue
    from service.store.queue import View
    from service.store.tokens import TokenVault

    engine = create_engine(store.url)
    try:
        vault = TokenVault(engine, [keys["TOKEN_ENCRYPTION_KEYS"]])
        now = dt.datetime.now(dt.UTC)
        for n in range(locations):
            vault.set_token(f"loc-{n:03d}", access_token=token(n), now=now)
        queue = Queue(engine)
        views = [View(kind="estimate" if i % 10 == 9 else "invoice",
                      location_id=f"loc-{i % locations:03d}",
                      document_id=f"doc-{i:06d}", viewed_at=now, source="bench")
                 for i in range(documents)]
        for first in range(0, len(views), 500):
            queue.record_views(views[first:first + 500], now=now)
    finally:
        engine.dispose()
    due = store.scalar("SELECT count(*) FROM documents WHERE status = 'pending'")
    if due != documents:
        raise RuntimeError(f"preloaded {due} due documents, wanted {documents}")


def wait_documents_delivered(store: Store, forwarder: Process, documents: int, *,
                             deadline: float, interval: float,
                             each: Callable[[int], None] | None = None
                             ) -> tuple[int, float | None]:
    """Poll the store every ``interval`` s until ``documents`` documents are delivered
    (idle, ``sent_seq >= views_seq``) or ``deadline`` (``time.monotonic()``) passes; call
    ``each(delivered)`` at every poll. Returns the count and when it was reached (None:
    not in time); fails if the forwarder exits first."""
    delivered = 0
    while time.monotonic() < deadline:
        delivered = store.scalar("SELECT count(*) FROM documents WHERE status = 'idle' "
                                 "AND sent_seq >= views_seq")
        if delivered >= documents:
            return delivered, time.monotonic()
        if not forwarder.running():
            raise RuntimeError(f"forwarder exited early:\n{forwarder.tail()}")
        if each is not None:
            each(delivered)
        time.sleep(interval)
    return delivered, None
