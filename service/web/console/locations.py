"""The locations list (filter by state, search, page by cursor) and one location's page.

Both read the locations directory (``Store.list_locations``, ``Store.location``) through
what ``GET /v1/locations`` uses; the page's actions are in ``actions.py``.
"""

from __future__ import annotations

from urllib.parse import urlencode

import marshmallow as ma
from flask import abort, render_template, request, url_for

from ...ids import is_valid_id
from ...store.directory import LOCATION_STATES
from ...store.prefixes import list_prefixes
from ..deps import services
from ..locations import location_page
from ..schemas import LocationQuerySchema
from . import bp
from .lookup import filled

# The read model's states (in its order: the worst first) as a person reads them.
LABELS = {
    "no_token": "No token: views are waiting for one",
    "invalid": "Token invalid: HighLevel refused it",
    "inactive": "Inactive: HighLevel says the location is not active",
    "dead": "Dead letters: views HighLevel will not take",
    "paused": "Paused by HighLevel's rate limit",
    "ok": "OK",
}
STATES = {state: LABELS.get(state, state) for state in LOCATION_STATES}


@bp.get("/locations")
def locations():
    """Every location with a token or views, filtered by state and searched by id (the
    query ``GET /v1/locations`` takes)."""
    given = filled(request.args)
    try:
        args = LocationQuerySchema().load(given)
    except ma.ValidationError as err:
        return render_template("console/locations.html", form=given, errors=err.messages,
                               rows=[], next_url=None, states=STATES), 422
    svc = services()
    rows, cursor = svc.store.list_locations(
        state=args.get("state"), search=args.get("q"), cursor=args.get("cursor"),
        limit=args["limit"], now=svc.clock())
    keep = {k: v for k, v in given.items() if k in ("state", "q", "limit")}
    next_url = f"{request.path}?{urlencode({**keep, 'cursor': cursor})}" if cursor else None
    return render_template("console/locations.html", form=given, errors={}, rows=rows,
                           next_url=next_url, states=STATES)


def checked_id(location_id: str) -> str:
    """``location_id`` if it is an id; otherwise the page does not exist."""
    if not is_valid_id(location_id):
        abort(404, "No location has that id.")
    return location_id


def render_location(location_id: str, *, status: int = 200, errors: dict | None = None,
                    minted: dict | None = None):
    """A location's page (also re-shown by an action whose form was not valid, or with a
    pixel prefix just ``minted``): what ``GET /v1/locations/<id>`` answers, as HTML, and
    the location's pixel prefixes."""
    location = location_page(location_id)
    if location is None:
        abort(404, f"The relay holds nothing for {location_id}: no token and no views.")
    prefixes = list_prefixes(services().engine, location_id)
    return render_template("console/location.html", location=location, states=STATES,
                           log_url=url_for("console.deliveries", locationId=location_id),
                           errors=errors or {}, prefixes=prefixes, minted=minted), status


@bp.get("/locations/<location_id>")
def location(location_id: str):
    """Token, state, queue, verdicts, recent attempts and the actions of one location."""
    return render_location(checked_id(location_id))
