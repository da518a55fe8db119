"""API keys: ``POST /v1/keys``, ``GET /v1/keys`` (``DELETE /v1/keys/<id>`` has no body)."""

from __future__ import annotations

import marshmallow as ma

from ...ids import Id
from ...store.apikeys import MAX_LOCATIONS, MAX_NAME_LENGTH, SCOPES
from .common import OneLine, UTCDateTime

NAME = [ma.validate.Length(min=1, max=MAX_NAME_LENGTH), *OneLine]  # for people, one line


class KeyCreateSchema(ma.Schema):
    """A key to make: a name, its scopes, and (for ``events:write``) maybe its locations."""

    class Meta:
        unknown = ma.RAISE

    name = ma.fields.String(required=True, validate=NAME,
                            metadata={"description": "for people: what uses the key"})
    scopes = ma.fields.List(
        ma.fields.String(validate=ma.validate.OneOf(SCOPES)), required=True,
        validate=ma.validate.Length(min=1, max=len(SCOPES), error=(
            f"Give one or more of {', '.join(SCOPES)}, each once.")),
        metadata={"description": "admin implies every other scope"})
    locations = ma.fields.List(
        ma.fields.String(validate=Id), validate=ma.validate.Length(min=1, max=MAX_LOCATIONS),
        metadata={"description": "only with events:write (not admin): the locations it may "
                                 "post events for; default: every location"})

    @ma.validates_schema
    def locations_limit_events_write(self, data, **kwargs):
        scopes = data.get("scopes") or []
        if "locations" in data and ("events:write" not in scopes or "admin" in scopes):
            raise ma.ValidationError("Locations limit events:write: give that scope (and not "
                                     "admin, which sees every location).", "locations")


class KeySchema(ma.Schema):
    """A key as listed: never the key itself, never its hash."""

    id = ma.fields.Integer()
    name = ma.fields.String()
    prefix = ma.fields.String(metadata={"description": "the key's first characters"})
    scopes = ma.fields.List(ma.fields.String(validate=ma.validate.OneOf(SCOPES)))
    locations = ma.fields.List(ma.fields.String(), allow_none=True,
                               metadata={"description": "null: every location"})
    createdAt = UTCDateTime()
    lastUsedAt = UTCDateTime(allow_none=True, metadata={
        "description": "within a minute or so; null: never used"})
    revokedAt = UTCDateTime(allow_none=True)


class CreatedKeySchema(KeySchema):
    """A key just made: the only answer that holds the key."""

    key = ma.fields.String(metadata={"description": "shown this once: keep it now"})


class KeyListSchema(ma.Schema):
    keys = ma.fields.List(ma.fields.Nested(KeySchema))
