"""Event ingest: ``POST /v1/events`` and ``GET /v1/events/<id>``."""

from __future__ import annotations

import functools

from flask import g, request

from ..ingest.views import build_view
from ..metrics import observe_ingest
from ..store.queue import View
from .auth import current_grant, require_locations, require_scope
from .bodies import Blueprint
from .deps import services
from .errors import NotFoundError, ServiceError
from .schemas import INGEST_BODY, EventStatusSchema, IngestResponseSchema, IngestSchema

bp = Blueprint("events", __name__, url_prefix="/v1/events",
               description="Invoice and estimate views from internal services")


class UnsupportedMediaTypeError(ServiceError):
    status = 415
    message = "Send the body as JSON (Content-Type: application/json)"


def require_json(view):
    """Answer 415 unless the body is declared JSON (before it is parsed)."""

    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        if not request.is_json:
            raise UnsupportedMediaTypeError()
        return view(*args, **kwargs)

    return wrapped


def to_view(event: dict) -> View:
    """Turn one validated event into the store's ``View``."""
    return event_view(services(), event, now=services().clock(),
                      request_id=g.get("request_id"))


def event_view(svc, event: dict, *, now, request_id: str | None) -> View:
    """One validated event as the store's ``View`` (no Flask: the front door uses it too)."""
    kind = "invoice" if "invoiceId" in event else "estimate"
    return build_view(
        svc.classifier, machine_opens=svc.config["MACHINE_OPENS"], kind=kind,
        location_id=event["locationId"], document_id=event.get("invoiceId") or event["estimateId"],
        viewed_at=event.get("viewedAt") or now, event_key=event.get("eventId"),
        source=event.get("source"), user_agent=event.get("userAgent"), ip=event.get("ip"),
        request_id=request_id)


# Set by the front door (events_front) when the store failed on a request it took: Flask
# answers that request with the error, in the app's error shape, without writing again.
STORE_ERROR = "service.events.store_error"


@bp.route("", methods=["POST"])
@bp.doc(requestBody=INGEST_BODY)
@require_scope("events:write")
@require_json
@bp.arguments(IngestSchema)
@bp.response(202, IngestResponseSchema)
def post_events(body):
    """Accept one event, or a batch of 1-500 (all or nothing).

    Each view is committed before the 202. A repeated ``eventId`` answers
    ``duplicate`` with the first event's id and is not sent again. A key limited to
    some locations may post only theirs (403 naming the others; nothing is stored).
    """
    stored_error = request.environ.pop(STORE_ERROR, None)
    if stored_error is not None:
        raise stored_error
    require_locations(e["locationId"] for e in body["events"])
    views = [to_view(e) for e in body["events"]]
    accepted = services().store.record_views(views, now=services().clock())
    observe_ingest(views, accepted, source="api")
    results = [{"id": a.id, "status": a.status} for a in accepted]
    return results[0] if "events" not in request.get_json() else {"events": results}


def find_event(event_id: str) -> dict | None:
    """Where the event ``event_id`` stands, or None if there is no such event (the API's
    ``GET /v1/events/<id>`` and the console's lookup)."""
    # No stored id is longer, or holds a NUL (which PostgreSQL cannot even compare: a 500).
    known = len(event_id) <= 64 and "\x00" not in event_id
    return services().store.event_status(event_id) if known else None


@bp.route("/<event_id>", methods=["GET"])
@require_scope("events:write", "read")
@bp.response(200, EventStatusSchema)
def get_event(event_id):
    """Where an event stands: queued, delivered (with the time), failed or filtered.
    A key that posts events, or reads (an operator following a view up), may read it; a
    key limited to some locations sees only their events (the others are not found)."""
    status = find_event(event_id)
    if status is None or not current_grant().may_read_event(status["locationId"]):
        raise NotFoundError("No event with that id")
    return status
