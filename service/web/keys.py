"""API keys kept in the store: ``POST``, ``GET /v1/keys``, ``DELETE /v1/keys/<id>`` (admin).

The key is in the 201 answer of its creation and nowhere else, ever: lists show its prefix.
"""

from __future__ import annotations

import logging

from ..store.apikeys import MAX_ID
from .auth import require_scope
from .bodies import Blueprint
from .deps import services
from .errors import NotFoundError
from .schemas import CreatedKeySchema, KeyCreateSchema, KeyListSchema

logger = logging.getLogger(__name__)

bp = Blueprint("keys", __name__, url_prefix="/v1/keys",
               description="API keys kept in the store, with scopes")
KEY_ID = {"in": "path", "name": "key_id", "required": True,
          "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID}}


def create_key(body: dict) -> dict:
    """Make a key from ``KeyCreateSchema``'s loaded fields; return its row with ``key``
    (the API, the console and ``flask keys create`` all make keys here)."""
    svc = services()
    row, key = svc.keys.create(body["name"], body["scopes"], locations=body.get("locations"),
                               now=svc.clock())
    logger.info("apikey.created", extra={"key_id": row["id"], "scopes": row["scopes"]})
    return {**row, "key": key}


def revoke_key(key_id: int) -> bool:
    """Revoke a key; False if there is none with that id."""
    svc = services()
    revoked = svc.keys.revoke(key_id, now=svc.clock())
    if revoked:
        logger.info("apikey.revoked", extra={"key_id": key_id})
    return revoked


@bp.route("", methods=["POST"])
@require_scope("admin")
@bp.arguments(KeyCreateSchema)
@bp.response(201, CreatedKeySchema)
def post_key(body):
    """Make a key with scopes (and, for ``events:write``, maybe a list of locations).
    The answer holds the key: it is never shown again."""
    return create_key(body)


@bp.route("", methods=["GET"])
@require_scope("admin")
@bp.response(200, KeyListSchema)
def list_keys():
    """Every stored key, newest first, revoked ones too: name, prefix, scopes, locations,
    times. Never a key."""
    return {"keys": services().keys.list()}


@bp.route("/<int:key_id>", methods=["DELETE"], parameters=[KEY_ID])
@require_scope("admin")
@bp.response(204)
def delete_key(key_id):
    """Revoke a key: every process refuses it within seconds (401)."""
    if not revoke_key(key_id):
        raise NotFoundError("No key with that id")
