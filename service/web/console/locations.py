"""The locations list (filter by state, search, page by cursor) and one location's page.

Both read the locations read model (``Store.list_locations``, ``Store.location``), the same
functions behind ``GET /v1/locations``; the page's actions are in ``actions.py``.
"""

from __future__ import annotations

from urllib.parse import urlencode

import marshmallow as ma
from flask import abort, render_template, request, url_for

from ...ids import is_valid_id
from ...store.deliverylog import LogFilter, list_deliveries
from ..deps import services
from . import bp
from .lookup import filled

# The read model's states, in the order a person fixes them, with what each means.
STATES = {
    "no_token": "No token: views are waiting for one",
    "invalid": "Token invalid: HighLevel refused it",
    "inactive": "Inactive: HighLevel says the location is not active",
    "paused": "Paused by HighLevel's rate limit",
    "dead": "Dead letters: views HighLevel will not take",
    "ok": "OK",
}
RECENT_ATTEMPTS = 20


class LocationQuerySchema(ma.Schema):
    """The list's query string: a state, a search on the id, the page."""

    class Meta:
        unknown = ma.RAISE

    state = ma.fields.String(validate=ma.validate.OneOf(list(STATES)))
    q = ma.fields.String(validate=ma.validate.Regexp(
        r"^[A-Za-z0-9_-]{1,64}$", error="Search by id: letters, digits, _ and -."))
    cursor = ma.fields.String(validate=ma.validate.Length(max=200))
    limit = ma.fields.Integer(load_default=50, validate=ma.validate.Range(min=1, max=200))


@bp.get("/locations")
def locations():
    """Every location with a token or views, filtered by state and searched by id."""
    given = filled(request.args)
    try:
        args = LocationQuerySchema().load(given)
    except ma.ValidationError as err:
        return render_template("console/locations.html", form=given, errors=err.messages,
                               rows=[], next_url=None, states=STATES), 422
    svc = services()
    try:
        rows, cursor = svc.store.list_locations(
            state=args.get("state"), search=args.get("q"), cursor=args.get("cursor"),
            limit=args["limit"], now=svc.clock())
    except ValueError:  # a cursor the read model did not make
        return render_template("console/locations.html", form=given, rows=[], next_url=None,
                               states=STATES, errors={"cursor": ["Not a page of this list."]}
                               ), 422
    keep = {k: v for k, v in given.items() if k in ("state", "q", "limit")}
    next_url = f"{request.path}?{urlencode({**keep, 'cursor': cursor})}" if cursor else None
    return render_template("console/locations.html", form=given, errors={}, rows=rows,
                           next_url=next_url, states=STATES)


def checked_id(location_id: str) -> str:
    """``location_id`` if it is an id; otherwise the page does not exist."""
    if not is_valid_id(location_id):
        abort(404, "No location has that id.")
    return location_id


def render_location(location_id: str, *, status: int = 200, errors: dict | None = None):
    """A location's page (also re-shown by an action whose form was not valid)."""
    svc = services()
    location = svc.store.location(location_id, now=svc.clock())
    if location is None:
        abort(404, f"The relay holds nothing for {location_id}: no token and no views.")
    attempts, more = list_deliveries(svc.engine, LogFilter(location_id=location_id),
                                     limit=RECENT_ATTEMPTS)
    install_url = (svc.config["PUBLIC_BASE_URL"].rstrip("/") + url_for("oauth.install")
                   if svc.oauth is not None else None)
    log_url = url_for("console.deliveries", locationId=location_id)
    return render_template("console/location.html", location=location, states=STATES,
                           attempts=attempts, more_attempts=more is not None,
                           install_url=install_url, log_url=log_url,
                           errors=errors or {}), status


@bp.get("/locations/<location_id>")
def location(location_id: str):
    """Token, state, queue, verdicts, recent attempts and the actions of one location."""
    return render_location(checked_id(location_id))
