"""Admin routes: a location's HighLevel token (store, remove, inspect). Never a secret out."""

from __future__ import annotations

from ..clock import expiry
from ..ids import ID_PATTERN, ID_RULE, is_valid_id
from .auth import require_admin_key
from .bodies import Blueprint
from .deps import services
from .errors import NotFoundError, ServiceError
from .schemas import LocationListSchema, LocationSchema, PurgeSchema, TokenSchema

bp = Blueprint("locations", __name__, url_prefix="/v1/locations",
               description="Per-location HighLevel tokens")
SECURITY = [{"adminKey": []}]
# The path's id, documented with the rule each view checks first (_location_id).
LOCATION_ID = {"in": "path", "name": "location_id", "required": True,
               "schema": {"type": "string", "pattern": ID_PATTERN}}


def _location_id(value: str) -> str:
    if not is_valid_id(value):
        raise ServiceError(f"locationId must be {ID_RULE}",
                           errors={"locationId": ["Invalid id."]})
    return value


def save_token(location_id: str, token: dict) -> int:
    """Store or replace ``location_id``'s token from ``TokenSchema``'s loaded fields, and
    send its parked views again; return how many documents were released. The API, the
    console and ``flask tokens set`` all store a token through here."""
    svc = services()
    now = svc.clock()
    expires_at = expiry(token.get("expiresIn"), now=now) or token.get("expiresAt")
    svc.vault.set_token(location_id, access_token=token["accessToken"],
                        refresh_token=token.get("refreshToken"), expires_at=expires_at,
                        company_id=token.get("companyId"), now=now)
    return svc.store.unblock(now=now, location_id=location_id)


def location_summary(location_id: str) -> dict | None:
    """A location's token summary with its queue and verdict counts."""
    summary = services().vault.describe(location_id)
    if summary is None:
        return None
    stats = services().store.location_stats(location_id)
    return {**summary, "queue": stats["documents"], "verdicts": stats["verdicts"]}


@bp.route("/<location_id>/token", methods=["PUT"], parameters=[LOCATION_ID])
@bp.doc(security=SECURITY)
@require_admin_key
@bp.arguments(TokenSchema)
@bp.response(200, LocationSchema)
def put_token(body, location_id):
    """Store or replace a location's token; its parked views are sent again."""
    location_id = _location_id(location_id)
    save_token(location_id, body)
    return location_summary(location_id)


@bp.route("/<location_id>/token", methods=["DELETE"], parameters=[LOCATION_ID])
@bp.doc(security=SECURITY)
@require_admin_key
@bp.response(204)
def delete_token(location_id):
    """Remove a location's token; its views wait (blocked) until a new one is stored."""
    location_id = _location_id(location_id)
    svc = services()
    if not svc.vault.delete_token(location_id):
        raise NotFoundError("No token stored for that location")
    svc.store.block_location(location_id, now=svc.clock())


@bp.route("", methods=["GET"])
@bp.doc(security=SECURITY)
@require_admin_key
@bp.response(200, LocationListSchema)
def list_locations():
    """Every location with a token: kind, status, expiry, last error."""
    return {"locations": services().vault.list()}


@bp.route("/<location_id>", methods=["GET"], parameters=[LOCATION_ID])
@bp.doc(security=SECURITY)
@require_admin_key
@bp.response(200, LocationSchema)
def get_location(location_id):
    """One location's token summary, queue by status and views by verdict."""
    summary = location_summary(_location_id(location_id))
    if summary is None:
        raise NotFoundError("No token stored for that location")
    return summary


@bp.route("/<location_id>", methods=["DELETE"], parameters=[LOCATION_ID])
@bp.doc(security=SECURITY)
@require_admin_key
@bp.response(200, PurgeSchema)
def purge_location(location_id):
    """Delete everything stored for a location (a data-erasure request): its events,
    documents, delivery log, token, installs and rate-limit state. Idempotent."""
    from ..store.retention import purge_location as purge

    location_id = _location_id(location_id)
    return {"locationId": location_id, "deleted": purge(services().engine, location_id)}
