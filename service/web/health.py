"""Liveness and readiness for the load balancer; metrics for Prometheus."""

from __future__ import annotations

from flask import Blueprint, Response, request

from ..metrics import QueueCollector, exposition
from ..store.engine import current_revision, head_revision, known_revisions
from .deps import services
from .errors import error_response

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """The process is up."""
    return {"status": "ok"}


@bp.get("/readyz")
def readyz():
    """The store is reachable and its schema is at least this code's; 503 otherwise.

    Ready at this code's head revision, and at a revision these migration scripts do not
    know: a newer release migrated the store, and migrations keep the previous release
    working (docs/deploy.md, "Releases and migrations"), so old processes stay in service
    during a rolling deploy. Not ready with no revision, or at a known older one.
    """
    try:
        revision = current_revision(services().engine)
    except Exception as exc:  # any failure to reach the store means not ready
        return error_response(503, f"store unreachable: {type(exc).__name__}",
                              headers={"Retry-After": "5"})
    head = head_revision()
    if revision is None:
        return error_response(503, f"store not migrated (no revision, need {head})")
    if revision != head and revision in known_revisions():
        return error_response(503, f"store not migrated (at {revision}, need {head})")
    return {"status": "ready", "revision": revision}


@bp.get("/metrics")
def metrics():
    """Prometheus text (no auth, as DESIGN.md says): every worker's values, then the
    queue depth read from the store."""
    body, content_type = exposition(QueueCollector(services().store),
                                    accept=request.headers.get("Accept"))
    return Response(body, headers={"Content-Type": content_type})
