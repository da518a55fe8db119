"""A location's pixel prefixes in the console: mint one (its URL template is shown on the
page that answers the form, once) and revoke one. The functions the API calls."""

from __future__ import annotations

import logging

import marshmallow as ma
from flask import flash, redirect, request, url_for

from ...ids import is_valid_id
from ..pixel_prefixes import mint_prefix, revoke
from ..schemas.prefixes import PixelPrefixRequestSchema
from . import bp
from .locations import checked_id, render_location

logger = logging.getLogger(__name__)


@bp.post("/locations/<location_id>/pixel-prefixes")
def mint_pixel_prefix(location_id: str):
    """Mint a prefix and show its URL template on the page this answers (never again: no
    redirect, so it is in no cookie, flash or URL)."""
    location_id = checked_id(location_id)
    fields = {k: v for k in ("kind", "name") if (v := request.form.get(k, "").strip())}
    try:
        body = PixelPrefixRequestSchema().load(fields)
    except ma.ValidationError as err:
        return render_location(location_id, status=422, errors={"prefix": err.messages})
    minted = mint_prefix(location_id, body["kind"], name=body.get("name"))
    return render_location(location_id, minted=minted)


@bp.post("/locations/<location_id>/pixel-prefixes/<prefix_id>/revoke")
def revoke_pixel_prefix(location_id: str, prefix_id: str):
    """Revoke a prefix of the location: its URLs record nothing from now on."""
    location_id = checked_id(location_id)
    if not is_valid_id(prefix_id) or revoke(location_id, prefix_id) is None:
        flash("That location has no such pixel prefix; nothing was changed.", "warn")
    else:
        flash(f"Pixel prefix {prefix_id} revoked: its URLs record nothing from now on.", "ok")
    return redirect(url_for("console.location", location_id=location_id))
