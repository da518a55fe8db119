"""What an operator can do to a location: store its token, send its parked views again,
replay its dead letters (after seeing how many), purge it. Each is a POSTed form (with its
CSRF token) that calls the function the API calls, then redirects to a page (PRG)."""

from __future__ import annotations

import logging

import marshmallow as ma
from flask import flash, redirect, render_template, request, url_for

from ...store.deliverylog import LogFilter
from ...store.retention import purge_location
from ..deps import services
from ..locations import save_token
from ..schemas import TokenSchema
from . import bp
from .locations import checked_id, render_location

logger = logging.getLogger(__name__)


def _back(location_id: str):
    return redirect(url_for("console.location", location_id=location_id))


@bp.post("/locations/<location_id>/token")
def store_token(location_id: str):
    """Store or replace the location's Private Integration Token; parked views go out."""
    location_id = checked_id(location_id)
    fields = {k: v for k in ("accessToken", "companyId")
              if (v := request.form.get(k, "").strip())}
    try:
        token = TokenSchema().load(fields)
    except ma.ValidationError as err:  # the token itself is never shown back
        return render_location(location_id, status=422, errors={"token": err.messages})
    released = save_token(location_id, token)
    logger.info("console.token_stored", extra={"location_id": location_id})
    flash(f"Token stored. {released} parked document(s) will be sent again.", "ok")
    return _back(location_id)


@bp.post("/locations/<location_id>/unblock")
def unblock(location_id: str):
    """Send the location's parked views again (they need an active token)."""
    location_id = checked_id(location_id)
    svc = services()
    released = svc.store.unblock(now=svc.clock(), location_id=location_id)
    flash(f"{released} parked document(s) will be sent again." if released else
          "Nothing was released: no views are parked, or the location has no active token.",
          "ok" if released else "warn")
    return _back(location_id)


@bp.get("/locations/<location_id>/replay")
def replay_preview(location_id: str):
    """Show how many dead documents a replay would re-queue, with the button to do it."""
    location_id = checked_id(location_id)
    svc = services()
    count = svc.store.replay(LogFilter(location_id=location_id), now=svc.clock(),
                             dry_run=True)
    return render_template("console/replay.html", location_id=location_id, count=count)


@bp.post("/locations/<location_id>/replay")
def replay(location_id: str):
    """Re-queue the location's dead documents."""
    location_id = checked_id(location_id)
    svc = services()
    count = svc.store.replay(LogFilter(location_id=location_id), now=svc.clock())
    logger.info("console.replayed", extra={"location_id": location_id, "documents": count})
    flash(f"{count} dead document(s) re-queued.", "ok" if count else "warn")
    return _back(location_id)


@bp.post("/locations/<location_id>/purge")
def purge(location_id: str):
    """Delete everything stored for the location, once its id is typed again."""
    location_id = checked_id(location_id)
    if request.form.get("confirm", "").strip() != location_id:
        return render_location(location_id, status=422, errors={
            "purge": ["Type the location's id exactly to confirm. Nothing was deleted."]})
    deleted = purge_location(services().engine, location_id)
    logger.info("console.purged", extra={"location_id": location_id, "deleted": deleted})
    flash(f"Purged {location_id}: " + ", ".join(f"{n} {what}" for what, n in deleted.items())
          + ".", "ok")
    return redirect(url_for("console.locations"))
