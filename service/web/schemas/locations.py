"""Locations: tokens, the directory (``GET /v1/locations``), a location's page, purge."""

from __future__ import annotations

import marshmallow as ma

from ...ids import Id
from .common import Printable, UTCDateTime


class TokenSchema(ma.Schema):
    """A location's HighLevel token: a Private Integration Token, or OAuth tokens."""

    OPENAPI_EXTRA = {"not": {"required": ["expiresIn", "expiresAt"]}}  # see one_expiry

    class Meta:
        unknown = ma.RAISE

    accessToken = ma.fields.String(required=True, load_only=True, validate=[
        ma.validate.Length(min=8, max=4096), Printable])
    refreshToken = ma.fields.String(load_only=True, validate=[
        ma.validate.Length(min=8, max=4096), Printable])

    @ma.pre_load
    def strip_pasted_whitespace(self, data, **kwargs):
        if isinstance(data, dict):
            for name in ("accessToken", "refreshToken"):
                if isinstance(data.get(name), str):
                    data = {**data, name: data[name].strip()}
        return data
    expiresIn = ma.fields.Integer(validate=ma.validate.Range(min=1, max=10 * 365 * 86400))
    expiresAt = UTCDateTime()
    companyId = ma.fields.String(validate=Id)

    @ma.validates_schema
    def one_expiry(self, data, **kwargs):
        if "expiresIn" in data and "expiresAt" in data:
            raise ma.ValidationError("Give expiresIn or expiresAt, not both.", "expiresAt")


class LocationSchema(ma.Schema):
    """A location's token summary: never the token itself."""

    locationId = ma.fields.String()
    tokenKind = ma.fields.String(metadata={"description": "pit or oauth"})
    status = ma.fields.String(metadata={"description": "active or invalid"})
    expiresAt = ma.fields.AwareDateTime(allow_none=True)
    companyId = ma.fields.String(allow_none=True)
    hasRefreshToken = ma.fields.Boolean()
    lastError = ma.fields.String(allow_none=True)
    createdAt = ma.fields.AwareDateTime()
    updatedAt = ma.fields.AwareDateTime()
    queue = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.Integer(),
                           metadata={"description": "documents by status"})
    verdicts = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.Integer(),
                              metadata={"description": "views by verdict"})


class LocationListSchema(ma.Schema):
    locations = ma.fields.List(ma.fields.Nested(LocationSchema))


class PurgeSchema(ma.Schema):
    """What a purge deleted, per table (all zero when nothing was stored)."""

    locationId = ma.fields.String()
    deleted = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.Integer(), metadata={
        "description": "rows deleted: events, documents, deliveries, tokens, installs, "
                       "rateLimits"})
