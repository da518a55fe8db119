"""Ids in a route's path: how the OpenAPI document describes them and how views check them.

Every route with an id in its path (a location's token and page, its pixel prefixes)
checks it first, the same way: a malformed id is 400 naming the field, before anything
is read or changed. (422 is kept for a body that parses but does not validate.)
"""

from __future__ import annotations

from ..ids import ID_PATTERN, ID_RULE, is_valid_id
from .errors import ServiceError


def path_parameter(name: str) -> dict:
    """The OpenAPI description of the path parameter ``name``, an id."""
    return {"in": "path", "name": name, "required": True,
            "schema": {"type": "string", "pattern": ID_PATTERN}}


def path_id(value: str, field: str) -> str:
    """``value`` if it is a valid id; else 400 naming ``field`` (the API's name for it)."""
    if not is_valid_id(value):
        raise ServiceError(f"{field} must be {ID_RULE}", errors={field: ["Invalid id."]})
    return value
