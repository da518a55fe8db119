"""Admin routes: a location's HighLevel token (store, remove), the locations directory and a
location's page, erasure. Never a secret out."""

from __future__ import annotations

from flask import url_for

from ..clock import expiry
from ..forward.token_rules import check_refreshable
from .auth import require_scope
from .bodies import Blueprint
from .deps import services
from .errors import NotFoundError
from .paths import path_id, path_parameter
from .schemas import (
    LocationDetailSchema,
    LocationListSchema,
    LocationQuerySchema,
    PurgeSchema,
    TokenSchema,
)

bp = Blueprint("locations", __name__, url_prefix="/v1/locations",
               description="Locations: their HighLevel tokens, the directory, erasure")
# The path's id, documented with the rule each view checks first (_location_id).
LOCATION_ID = path_parameter("location_id")


def _location_id(value: str) -> str:
    return path_id(value, "locationId")


def save_token(location_id: str, token: dict) -> int:
    """Store or replace ``location_id``'s token from ``TokenSchema``'s loaded fields, and
    send its parked views again; return how many documents were released. The API, the
    console and ``flask tokens set`` all store a token through here.

    :raises UnrefreshableTokenError: a refresh token without an OAuth app; nothing stored.
    """
    svc = services()
    check_refreshable(token.get("refreshToken"), client_id=svc.config["HIGHLEVEL_CLIENT_ID"],
                      client_secret=svc.config["HIGHLEVEL_CLIENT_SECRET"])
    now = svc.clock()
    expires_at = expiry(token.get("expiresIn"), now=now) or token.get("expiresAt")
    svc.vault.set_token(location_id, access_token=token["accessToken"],
                        refresh_token=token.get("refreshToken"), expires_at=expires_at,
                        company_id=token.get("companyId"), now=now)
    return svc.store.unblock(now=now, location_id=location_id)


def location_page(location_id: str) -> dict | None:
    """A location's row and details (``Store.location``), with the app's install link."""
    svc = services()
    found = svc.store.location(location_id, now=svc.clock())
    if found is None:
        return None
    cfg = svc.config
    oauth = cfg["HIGHLEVEL_CLIENT_ID"] and cfg["HIGHLEVEL_CLIENT_SECRET"]
    base = (cfg.get("PUBLIC_BASE_URL") or "").rstrip("/")
    install = base + url_for("oauth.install") if oauth else None
    return {**found, "installUrl": install}


@bp.route("/<location_id>/token", methods=["PUT"], parameters=[LOCATION_ID])
@require_scope("admin")
@bp.arguments(TokenSchema)
@bp.response(200, LocationDetailSchema)
def put_token(body, location_id):
    """Store or replace a location's token; its parked views are sent again."""
    location_id = _location_id(location_id)
    save_token(location_id, body)
    return location_page(location_id)


@bp.route("/<location_id>/token", methods=["DELETE"], parameters=[LOCATION_ID])
@require_scope("admin")
@bp.response(204)
def delete_token(location_id):
    """Remove a location's token; its views wait (blocked) until a new one is stored."""
    location_id = _location_id(location_id)
    svc = services()
    if not svc.vault.delete_token(location_id):
        raise NotFoundError("No token stored for that location")
    svc.store.block_location(location_id, now=svc.clock())


@bp.route("", methods=["GET"])
@require_scope("read")
@bp.arguments(LocationQuerySchema, location="query")
@bp.response(200, LocationListSchema)
def list_locations(args):
    """Every location with a token or views (``no_token``: views wait without a token), in
    id order: state, token summary, queue, views waiting, dead and delivered, last
    delivery. Filter by state, search by a part of the id; page with ``next``."""
    svc = services()
    rows, cursor = svc.store.list_locations(
        state=args.get("state"), search=args.get("q"), cursor=args.get("cursor"),
        limit=args["limit"], now=svc.clock())
    return {"locations": rows, "next": cursor}


@bp.route("/<location_id>", methods=["GET"], parameters=[LOCATION_ID])
@require_scope("read")
@bp.response(200, LocationDetailSchema)
def get_location(location_id):
    """One location, with a token or only views: its row, views by verdict, rate-limit
    budget, latest attempts and the app's install link."""
    page = location_page(_location_id(location_id))
    if page is None:
        raise NotFoundError("Nothing is stored for that location")
    return page


@bp.route("/<location_id>", methods=["DELETE"], parameters=[LOCATION_ID])
@require_scope("admin")
@bp.response(200, PurgeSchema)
def purge_location(location_id):
    """Delete everything stored for a location (a data-erasure request): its events,
    documents, delivery log, token, installs and rate-limit state. Idempotent."""
    from ..store.retention import purge_location as purge

    location_id = _location_id(location_id)
    return {"locationId": location_id, "deleted": purge(services().engine, location_id)}
