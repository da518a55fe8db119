"""Location pixels for templated emails: mint, list and revoke a location's prefixes, and
the pixel URL under one (``ingest/prefixes.py``). Admin routes; never the prefix out, but
in the one answer that mints it."""

from __future__ import annotations

import logging

from flask import Response

from ..ingest.pixels import GIF, GIF_HEADERS, img_tag
from ..ingest.prefixes import PLACEHOLDERS, ROUTE
from ..store.prefixes import PixelPrefix, create_prefix, list_prefixes, revoke_prefix
from .auth import require_scope
from .bodies import Blueprint
from .deps import services
from .errors import NotFoundError
from .paths import path_id, path_parameter
from .schemas.prefixes import (
    MintedPixelPrefixSchema,
    PixelPrefixListSchema,
    PixelPrefixRequestSchema,
)

logger = logging.getLogger(__name__)

bp = Blueprint("pixel_prefixes", __name__, url_prefix="/v1",
               description="Location pixels: a prefix per location and kind, for emails "
                           "whose sender fills in the document id from a template")
LOCATION_ID = path_parameter("location_id")
PREFIX_ID = path_parameter("prefix_id")
DOCUMENT = "{documentId}"  # what the URL template leaves to fill in



def listed(row: PixelPrefix) -> dict:
    """A prefix's row as the API lists it (``PixelPrefixSchema``)."""
    return {"id": row.id, "kind": row.kind, "name": row.name, "createdAt": row.created_at,
            "revokedAt": row.revoked_at}


def mint_prefix(location_id: str, kind: str, *, name: str | None = None) -> dict:
    """Add a prefix for the location's documents of ``kind`` and build its URL template and
    example ``<img>`` (the API, the console and the CLI share this)."""
    svc = services()
    row = create_prefix(svc.engine, location_id, kind=kind, name=name, now=svc.clock())
    base = svc.config["PUBLIC_BASE_URL"].rstrip("/")
    template = f"{base}{ROUTE}{svc.location_pixels.prefix_for(row)}/{DOCUMENT}.gif"
    logger.info("pixel_prefix.minted", extra={"location_id": location_id,
                                              "prefix_id": row.id, "kind": kind})
    return {**listed(row), "urlTemplate": template,
            "html": img_tag(template.replace(DOCUMENT, PLACEHOLDERS[kind]))}


def revoke(location_id: str, prefix_id: str) -> PixelPrefix | None:
    """Revoke the location's prefix: its URLs record nothing from now on in this process,
    and within ``prefixes.RECHECK`` in every other; None if the location has no such one."""
    svc = services()
    row = revoke_prefix(svc.engine, location_id, prefix_id, now=svc.clock())
    svc.location_pixels.forget(prefix_id)
    if row is not None:
        logger.info("pixel_prefix.revoked", extra={"location_id": location_id,
                                                   "prefix_id": prefix_id})
    return row


@bp.route("/locations/<location_id>/pixel-prefixes", methods=["POST"],
          parameters=[LOCATION_ID])
@require_scope("admin")
@bp.arguments(PixelPrefixRequestSchema)
@bp.response(201, MintedPixelPrefixSchema)
def mint_pixel_prefix(body, location_id):
    """Opt a location in to pixels for templated emails: a signed prefix for its invoices
    or estimates. Any document id put after it (``urlTemplate``'s ``{documentId}``, from a
    template's merge field) records a view of that document. Shown only in this answer;
    anyone holding it can mark any document of this kind viewed: revoke it if it leaks."""
    return mint_prefix(path_id(location_id, "locationId"), body["kind"],
                       name=body.get("name"))


@bp.route("/locations/<location_id>/pixel-prefixes", methods=["GET"],
          parameters=[LOCATION_ID])
@require_scope("admin")
@bp.response(200, PixelPrefixListSchema)
def list_pixel_prefixes(location_id):
    """A location's prefixes, revoked ones too, oldest first; never the prefix itself."""
    rows = list_prefixes(services().engine, path_id(location_id, "locationId"))
    return {"prefixes": [listed(row) for row in rows]}


@bp.route("/locations/<location_id>/pixel-prefixes/<prefix_id>", methods=["DELETE"],
          parameters=[LOCATION_ID, PREFIX_ID])
@require_scope("admin")
@bp.response(204)
def revoke_pixel_prefix(location_id, prefix_id):
    """Revoke a prefix: its URLs still answer the GIF and record nothing, on every web
    process within seconds. Revoking it again changes nothing."""
    if revoke(path_id(location_id, "locationId"), path_id(prefix_id, "prefixId")) is None:
        raise NotFoundError("That location has no such pixel prefix")


@bp.route("/pixel/l/<prefix>/<document_id>.gif", methods=["GET", "HEAD"],
          merge_slashes=False, strict_slashes=False)
@bp.doc(summary="A location pixel", description=(
    "Always 200 with the 43-byte transparent GIF and no-store caching, like the pixel. "
    "A GET that is not a prefetch records a view of the document while the prefix is "
    "genuine and not revoked and the document id follows the id rule."),
    responses={"200": {"description": "1x1 GIF", "content": {"image/gif": {}}}})
def location_pixel(prefix: str, document_id: str):
    # GETs are answered (and recorded) by pixel_front.PixelFrontDoor before Flask; this
    # view documents the route and answers HEAD.
    return Response(GIF, status=200, headers=GIF_HEADERS)
