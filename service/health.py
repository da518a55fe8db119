"""Liveness and readiness for the load balancer."""

from __future__ import annotations

from flask import Blueprint

from .db import current_revision, head_revision
from .deps import services
from .errors import error_response

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """The process is up."""
    return {"status": "ok"}


@bp.get("/readyz")
def readyz():
    """The store is reachable and migrated; 503 otherwise."""
    try:
        revision = current_revision(services().engine)
    except Exception as exc:  # any failure to reach the store means not ready
        return error_response(503, f"store unreachable: {type(exc).__name__}",
                              headers={"Retry-After": "5"})
    if revision != head_revision():
        return error_response(503, f"store not migrated (at {revision}, need {head_revision()})")
    return {"status": "ready", "revision": revision}
