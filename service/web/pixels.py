"""The tracking pixel, the beacon, and minting pixel URLs.

The pixel answers every request with the same GIF: a mail client must never show
a broken image, whatever the token or the store's state. Only a GET (or a beacon
POST) with a valid token that is not a prefetch records a view.
"""

from __future__ import annotations

from flask import Response, g, request
from werkzeug.routing import PathConverter

from ..clock import expiry
from ..ingest.pixels import GIF, GIF_HEADERS, PixelTarget, img_tag, is_prefetch, pixel_url
from .auth import require_scope
from .bodies import Blueprint
from .cors import beacon_origin_allowed
from .deps import services
from .pixel_front import record_view
from .relay_script import script_tag
from .schemas import PixelUrlRequestSchema, PixelUrlSchema

bp = Blueprint("pixel", __name__, url_prefix="/v1",
               description="Tracking pixel and beacon for invoice emails and portals")


def record_pixel_view(token: str, *, source: str) -> bool:
    """Record a view from the current request (see ``pixel_front.record_view``)."""
    return record_view(services(), token, source=source,
                       user_agent=request.headers.get("User-Agent"), ip=request.remote_addr,
                       request_id=g.get("request_id"))


class AnyPathConverter(PathConverter):
    """Like ``path`` but also empty, or starting or ending with slashes: any pixel URL."""

    regex = r"[\s\S]*"  # newlines too: %0A in a URL must not 404
    part_isolating = False


@bp.record_once
def _register_converter(state):
    state.app.url_map.converters["anypath"] = AnyPathConverter


@bp.route("/pixel/<anypath:rest>", methods=["GET", "HEAD"], merge_slashes=False,
          strict_slashes=False)
@bp.doc(summary="The tracking pixel", description=(
    "Always 200 with a 43-byte transparent GIF and no-store caching, whatever the token. "
    "Only a GET with a valid, unexpired token that is not a prefetch records a view."),
    responses={"200": {"description": "1x1 GIF", "content": {
        "image/gif": {"schema": {"type": "string", "format": "binary"}}}}})
def pixel(rest: str):
    # Every GET under /v1/pixel/ is answered (and recorded) by pixel_front.PixelFrontDoor
    # before it reaches Flask; this view documents the route and answers HEAD.
    return Response(GIF, status=200, headers=GIF_HEADERS)


@bp.route("/beacon/<path:token>", methods=["POST"])
@bp.doc(summary="Beacon for navigator.sendBeacon", description=(
    "Any small body, any content type; always 204. A valid token records a view, unless "
    "the request's Origin is not one of BEACON_ALLOWED_ORIGINS. CORS preflights (OPTIONS) "
    "are answered for those origins."),
    responses={"204": {"description": "No content"}})
def beacon(token: str):
    if not is_prefetch(request.headers) and beacon_origin_allowed():
        record_pixel_view(token, source="beacon")
    return Response(status=204)


@bp.route("/pixel-urls", methods=["POST"])
@require_scope("pixels:mint")
@bp.arguments(PixelUrlRequestSchema)
@bp.response(200, PixelUrlSchema)
def mint_pixel_url(body):
    """Mint a signed pixel URL, a ready ``<img>`` tag for an email and a ``<script>`` tag for a
    portal page, for an invoice or estimate."""
    return mint(body["locationId"], body.get("invoiceId") or body["estimateId"],
                kind="invoice" if "invoiceId" in body else "estimate",
                expires_in=body.get("expiresIn"))


def mint(location_id: str, document_id: str, *, kind: str,
         expires_in: int | None = None) -> dict:
    """Sign a pixel token and build its URL and HTML (the API and the CLI share this)."""
    svc = services()
    expires_at = expiry(expires_in, now=svc.clock().replace(microsecond=0))
    token = svc.pixel_signer.sign(PixelTarget(kind, location_id, document_id, expires_at))
    base = svc.config["PUBLIC_BASE_URL"]
    url = pixel_url(base, token)
    beacon_url = f"{base.rstrip('/')}/v1/beacon/{token}"
    return {"url": url, "html": img_tag(url), "token": token, "expiresAt": expires_at,
            "beaconUrl": beacon_url, "script": script_tag(base, beacon_url)}
