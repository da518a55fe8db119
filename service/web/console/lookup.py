"""Finding things: an event by its id, and the delivery log with the API's filters."""

from __future__ import annotations

from urllib.parse import urlencode

import marshmallow as ma
from flask import render_template, request

from ...store.deliverylog import list_deliveries
from ..deliveries import log_filter
from ..deps import services
from ..events import find_event
from ..schemas import DeliveryQuerySchema
from . import bp

# What the delivery log's outcome column holds (DeliverySchema documents the same list).
OUTCOMES = ("delivered", "retry", "rate_limited", "network_error", "unauthorized",
            "permanent", "expired", "no_token", "token_invalid", "token_unreadable")
FILTER_FIELDS = ("locationId", "documentId", "outcome", "since", "until")


def filled(args) -> dict[str, str]:
    """A form's query string without its empty fields (a form sends every input)."""
    return {k: v.strip() for k, v in args.items() if v.strip()}


@bp.get("/events")
def events():
    """Look an event up by the id ``POST /v1/events`` answered."""
    event_id = request.args.get("id", "").strip()
    if not event_id:
        return render_template("console/events.html", event_id="", event=None)
    event = find_event(event_id)
    status = 200 if event else 404
    return render_template("console/events.html", event_id=event_id, event=event), status


@bp.get("/deliveries")
def deliveries():
    """The delivery log, newest first, with the API's filters (``GET /v1/deliveries``)."""
    given = filled(request.args)
    try:
        args = DeliveryQuerySchema().load(given)
    except ma.ValidationError as err:
        return render_template("console/deliveries.html", form=given, errors=err.messages,
                               rows=[], next_url=None, outcomes=OUTCOMES), 422
    rows, cursor = list_deliveries(services().engine, log_filter(args), limit=args["limit"],
                                   before=args.get("cursor"))
    keep = {k: v for k, v in given.items() if k in (*FILTER_FIELDS, "limit")}
    next_url = f"{request.path}?{urlencode({**keep, 'cursor': cursor})}" if cursor else None
    return render_template("console/deliveries.html", form=given, errors={}, rows=rows,
                           next_url=next_url, outcomes=OUTCOMES)

