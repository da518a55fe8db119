"""PROTOTYPE for bench/pixel.py (not the service): group commit of pixel views.

``create_app()`` builds the real service app (``service.create_app``) and wraps its store
so that ``record_views`` hands the views to one writer thread per worker process and
blocks until that thread has committed them. The writer takes whatever is queued (the
views of every request that arrived while the previous commit was running, up to
``GROUP_COMMIT_MAX`` requests) and commits them in ONE transaction, using the store's own
statements (``Store._record(conn, views, now)`` once per request: the documents upsert
and the events insert, each request with its own ``now``). So:

- durability is unchanged: a request returns (and the GIF goes out) only after the
  transaction holding its view has committed, with the same synchronous=FULL / fsync;
- one commit (one fsync, one SQLite write lock) covers N views instead of one;
- if a group's transaction fails, each request of the group is retried alone through the
  unwrapped ``record_views`` (with its IntegrityError retry), so one bad view never fails
  the others and the caller sees exactly the exception it would have seen.

``GROUP_COMMIT_MODE=lean`` also measures "fewer, cheaper statements per view": per group,
the views are counted per document, ONE multi-row upsert of ``documents`` (prebuilt once,
``views_seq + k``, RETURNING each row's new ``views_seq``, from which each view's seq is
assigned in arrival order) and ONE multi-row insert of ``events`` (prebuilt once, executed
with a list of parameter dicts). The per-view work is then binding values, not building
SQLAlchemy constructs. Differences from the store's semantics, acceptable for a
measurement, to settle in a real implementation: the documents row's ``due_at`` /
``pending_since`` / ``updated_at`` take the group's latest ``now`` (each event keeps its
own ``received_at``), and views with an ``event_key`` go through the store's own path.

Run it like the service::

    gunicorn --config config/gunicorn.conf.py "bench.pixel_groupcommit:create_app()"
    GROUP_COMMIT_MODE=lean gunicorn --config config/gunicorn.conf.py \
        "bench.pixel_groupcommit:create_app()"

Only for measuring the potential; see bench/results-pixel.md for the numbers and design.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import sys
import threading
import uuid
from concurrent.futures import Future

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from werkzeug.datastructures import EnvironHeaders

from service import _REQUEST_ID
from service.db import UTCDateTime, documents, events
from service.pixels import GIF, GIF_HEADERS, is_prefetch
from service.store import DEAD, IDLE, PENDING, Accepted, View
from service.verdicts import should_forward

try:
    from service.metrics import observe_ingest
except ImportError:  # a tree without metrics
    observe_ingest = None

logger = logging.getLogger("bench.groupcommit")


class GroupCommitStore:
    """Wrap a ``service.store.Store``: ``record_views`` is group-committed, the rest passes."""

    def __init__(self, store, max_group: int = 256, lean: bool = False):
        self._store = store
        self._lean = LeanWriter(store) if lean else None
        self._max = max_group
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pid = None
        self._lock = threading.Lock()
        self.groups = self.views = 0

    def __getattr__(self, name):
        return getattr(self._store, name)

    def _ensure_writer(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:  # started lazily in the worker (after gunicorn forks)
            if self._pid != os.getpid():
                self._queue = queue.SimpleQueue()
                threading.Thread(target=self._run, name="group-commit", daemon=True).start()
                self._pid = os.getpid()
                self.groups = self.views = 0
                atexit.register(self._report)

    def _report(self) -> None:
        """On worker exit: one line bench/pixel.py reads (requests per commit)."""
        print(f"groupcommit.stats pid={os.getpid()} groups={self.groups} "
              f"requests={self.views}", file=sys.stderr, flush=True)

    def record_views(self, views, *, now):
        self._ensure_writer()
        done: Future = Future()
        self._queue.put((list(views), now, done))
        return done.result()  # returns only after the commit that holds these views

    def _run(self) -> None:
        store = self._store
        while True:
            group = [self._queue.get()]
            while len(group) < self._max:
                try:
                    group.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                with store.engine.begin() as conn:  # one transaction, one commit, one fsync
                    if self._lean and not any(v.event_key for vs, _, _ in group for v in vs):
                        results = self._lean.record(conn, [(vs, now) for vs, now, _ in group])
                    else:
                        # the store's own statements, each request's views as it would
                        results = [store._record(conn, views, now) for views, now, _ in group]
            except Exception:  # noqa: BLE001 - isolate: each request on its own
                for views, now, done in group:
                    try:
                        done.set_result(store.record_views(views, now=now))
                    except Exception as exc:  # noqa: BLE001 - handed to the caller
                        done.set_exception(exc)
                continue
            self.groups += 1
            self.views += len(group)
            for (_, _, done), result in zip(group, results, strict=True):
                done.set_result(result)


class LeanWriter:
    """Record a group's views with two prebuilt multi-row statements (see the module doc)."""

    def __init__(self, store):
        d = documents.c
        insert = (postgresql if store.dialect == "postgresql" else sqlite).insert(documents)
        ex = insert.excluded
        reopen = sa.or_(d.status == IDLE, d.status == DEAD)  # no IN: executemany can't expand
        not_before = sa.case(
            (sa.and_(d.quiet_until.is_not(None), d.quiet_until > ex.updated_at),
             d.quiet_until), else_=ex.updated_at)
        now = sa.bindparam("p_now", type_=UTCDateTime)
        self.upsert = insert.values(
            kind=sa.bindparam("p_kind"), location_id=sa.bindparam("p_location_id"),
            document_id=sa.bindparam("p_document_id"), status=PENDING,
            views_seq=sa.bindparam("p_k"), due_at=now, pending_since=now, updated_at=now,
            last_request_id=sa.bindparam("p_request_id"),
        ).on_conflict_do_update(
            index_elements=[d.kind, d.location_id, d.document_id],
            set_={
                "views_seq": d.views_seq + ex.views_seq,
                "status": sa.case((reopen, PENDING), else_=d.status),
                "due_at": sa.case((reopen, not_before), else_=d.due_at),
                "pending_since": sa.case((reopen, ex.pending_since), else_=d.pending_since),
                "attempts": sa.case((reopen, 0), else_=d.attempts),
                "dead_reason": sa.case((reopen, None), else_=d.dead_reason),
                "last_request_id": ex.last_request_id,
                "updated_at": ex.updated_at,
            },
        ).returning(d.id, d.kind, d.location_id, d.document_id, d.views_seq)
        self.insert = events.insert()

    def record(self, conn, group):
        now = max(n for _, n in group)
        docs: dict = {}  # (kind, location, document) -> [views, last request id]
        for views, _ in group:
            for v in views:
                if v.forward:
                    entry = docs.setdefault((v.kind, v.location_id, v.document_id), [0, None])
                    entry[0] += 1
                    entry[1] = v.request_id
        seqs: dict = {}  # key -> [row id, next seq]
        if docs:
            params = [{"p_kind": k[0], "p_location_id": k[1], "p_document_id": k[2],
                       "p_k": n, "p_now": now, "p_request_id": rid}
                      for k, (n, rid) in sorted(docs.items())]  # one lock order: no deadlock
            for row in conn.execute(self.upsert, params):
                key = (row.kind, row.location_id, row.document_id)
                seqs[key] = [row.id, row.views_seq - docs[key][0] + 1]
        rows, results = [], []
        for views, view_now in group:
            out = []
            for v in views:
                row_id = seq = None
                if v.forward:
                    slot = seqs[(v.kind, v.location_id, v.document_id)]
                    row_id, seq = slot[0], slot[1]
                    slot[1] += 1
                event_id = str(uuid.uuid4())
                rows.append({"id": event_id, "event_key": None, "document_row": row_id,
                             "seq": seq, "kind": v.kind, "location_id": v.location_id,
                             "document_id": v.document_id, "viewed_at": v.viewed_at,
                             "received_at": view_now, "source": v.source,
                             "user_agent": v.user_agent, "ip": v.ip, "verdict": v.verdict,
                             "verdict_reason": v.verdict_reason, "forward": v.forward,
                             "request_id": v.request_id})
                out.append(Accepted(event_id, "queued" if v.forward else "filtered"))
            results.append(out)
        if rows:
            conn.execute(self.insert, rows)
        return results


class PixelFastPath:
    """``GROUP_COMMIT_MODE=fastpath``: the lean group commit, AND ``GET /v1/pixel/<t>.gif``
    answered by this small WSGI middleware in front of Flask (no Flask request context,
    routing, flask-smorest or hooks for the pixel), doing what ``record_pixel_view`` does:
    request id, prefetch check, token, classifier, View, the store (group-committed; the
    GIF goes out only after the view's commit), the metrics, the same GIF and headers.
    Everything else goes to the Flask app unchanged. Prototype caveat: it sits outside
    ProxyFix, so with TRUSTED_PROXIES > 0 it would record the proxy's address."""

    PREFIX = "/v1/pixel/"

    def __init__(self, app, wsgi_app):
        self.wsgi_app = wsgi_app
        self.svc = app.extensions["service"]
        self.headers = list(GIF_HEADERS.items())

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if (environ.get("REQUEST_METHOD") != "GET" or not path.startswith(self.PREFIX)
                or not path.endswith(".gif")):
            return self.wsgi_app(environ, start_response)
        incoming = environ.get("HTTP_X_REQUEST_ID", "")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        if not is_prefetch(EnvironHeaders(environ)):
            self.record(path[len(self.PREFIX):-len(".gif")], environ, request_id)
        start_response("200 OK", self.headers + [("X-Request-ID", request_id)])
        return [GIF]

    def record(self, token: str, environ, request_id: str) -> None:
        svc = self.svc
        try:
            now = svc.clock()
            target = svc.pixel_signer.verify(token, now=now)
            if target is None:
                logger.info("pixel.invalid_token", extra={"source": "pixel"})
                return
            user_agent = environ.get("HTTP_USER_AGENT", "")[:512] or None
            ip = environ.get("REMOTE_ADDR")
            verdict = svc.classifier.classify(user_agent=user_agent, ip=ip)
            view = View(kind=target.kind, location_id=target.location_id,
                        document_id=target.document_id, viewed_at=now, source="pixel",
                        user_agent=user_agent, ip=ip, verdict=verdict.verdict,
                        verdict_reason=verdict.reason,
                        forward=should_forward(verdict.verdict, svc.config["MACHINE_OPENS"]),
                        request_id=request_id)
            accepted = svc.store.record_views([view], now=now)
            if observe_ingest is not None:
                observe_ingest([view], accepted, source="pixel")
        except Exception:  # noqa: BLE001 - as record_pixel_view: log it, still answer
            logger.exception("pixel.record_failed", extra={"source": "pixel"})


class NoStore:
    """``GROUP_COMMIT_MODE=nostore``: records NOTHING. For analysis only: the relay's cost
    without its database write (token check, classifier, View, Flask, gunicorn)."""

    def __init__(self, store):
        self._store = store

    def __getattr__(self, name):
        return getattr(self._store, name)

    def record_views(self, views, *, now):
        return [Accepted(str(uuid.uuid4()), "queued") for _ in views]


def create_app(config=None):
    from service import create_app as service_app

    app = service_app(config)
    services = app.extensions["service"]
    mode = os.environ.get("GROUP_COMMIT_MODE", "store")
    if mode == "nostore":
        services.store = NoStore(services.store)
        return app
    services.store = GroupCommitStore(
        services.store, int(os.environ.get("GROUP_COMMIT_MAX", "256")),
        lean=mode in ("lean", "fastpath"))
    if mode == "fastpath":
        app.wsgi_app = PixelFastPath(app, app.wsgi_app)
    return app
