"""The keys page: every stored key, a form to make one (its key shown once) and revoke.

Making a key is the one console form that does not redirect after its POST (PRG): the key
must be shown once and kept nowhere, and a redirect would have to carry it in the session
cookie (signed, not encrypted). The answer is ``no-store``, like every console page.
"""

from __future__ import annotations

import logging
import re

import marshmallow as ma
from flask import flash, redirect, render_template, request, url_for

from ...store.apikeys import SCOPES
from ..deps import services
from ..keys import create_key, revoke_key
from ..schemas import KeyCreateSchema
from . import bp

logger = logging.getLogger(__name__)

SCOPE_LABELS = {
    "events:write": "events:write — post events (and read their status)",
    "pixels:mint": "pixels:mint — mint pixel URLs",
    "read": "read — locations, the delivery log, events' status",
    "admin": "admin — everything, keys and this console included",
}


def render_keys(*, created: dict | None = None, form: dict | None = None,
                errors: dict | None = None, status: int = 200):
    """The page: the new key (once), the form, and every key."""
    return render_template("console/keys.html", keys=services().keys.list(), created=created,
                           form=form or {}, errors=errors or {}, scopes=SCOPE_LABELS), status


def form_body() -> dict:
    """The form's fields as ``POST /v1/keys`` takes them (locations: commas or spaces)."""
    body: dict = {"name": request.form.get("name", "").strip(),
                  "scopes": request.form.getlist("scopes")}
    locations = [loc for loc in re.split(r"[\s,]+", request.form.get("locations", "")) if loc]
    if locations:
        body["locations"] = locations
    return body


@bp.get("/keys")
def keys():
    """Every stored key (never a key), and the form to make one."""
    return render_keys()


@bp.post("/keys")
def make_key():
    """Make a key and show it, this once."""
    body = form_body()
    try:
        loaded = KeyCreateSchema().load(body)
    except ma.ValidationError as err:
        return render_keys(form=body, errors=err.messages, status=422)
    created = create_key(loaded)
    logger.info("console.key_created", extra={"key_id": created["id"]})
    return render_keys(created=created, status=201)


@bp.post("/keys/<int:key_id>/revoke")
def key_revoke(key_id: int):
    """Revoke a key; it stops working everywhere within seconds."""
    if revoke_key(key_id):
        flash(f"Key {key_id} revoked: every process refuses it within seconds.", "ok")
    else:
        flash(f"No key {key_id}: nothing was revoked.", "warn")
    return redirect(url_for("console.keys"))


assert set(SCOPE_LABELS) == set(SCOPES)
