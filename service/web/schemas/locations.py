"""Locations: tokens, the directory (``GET /v1/locations``), a location's page, purge."""

from __future__ import annotations

import marshmallow as ma

from ...ids import Id
from ...store.directory import LOCATION_STATES
from .common import Printable, QuerySchema, UTCDateTime
from .deliveries import DeliverySchema


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


class LocationQuerySchema(QuerySchema):
    """The locations directory's filters and page (query string)."""

    state = ma.fields.String(validate=ma.validate.OneOf(LOCATION_STATES), metadata={
        "description": "the location's state, the worst that applies: "
                       + ", ".join(LOCATION_STATES) + " (in that order)"})
    q = ma.fields.String(validate=Id, metadata={
        "description": "a part of the location id (case-insensitive)"})
    cursor = ma.fields.String(validate=Id, metadata={"description": "next of the previous page"})
    # Each row is counted from its documents and dumped with ~20 fields: 500 rows took
    # 100-150 ms at the median (bench/console_read.py), over the goal at p99; 200 keep
    # every page under it.
    limit = ma.fields.Integer(load_default=50, validate=ma.validate.Range(min=1, max=200))


class QueueSchema(ma.Schema):
    """A location's documents by status."""

    pending = ma.fields.Integer()
    blocked = ma.fields.Integer(metadata={"description": "parked: no usable token"})
    dead = ma.fields.Integer(metadata={"description": "failed for good; replay re-queues"})
    idle = ma.fields.Integer(metadata={"description": "every view sent"})


class RateLimitPauseSchema(ma.Schema):
    pausedUntil = ma.fields.AwareDateTime()
    reason = ma.fields.String(allow_none=True, metadata={"description": "burst or daily"})


class LocationSchema(ma.Schema):
    """A location in the directory: its token's summary (never the token itself), its
    state and its counts."""

    locationId = ma.fields.String()
    # Dump only: OneOf is what the document promises (an enum for generated clients). Not
    # on the nullable fields: apispec states those as nullable with null in the enum, which
    # openapi-python-client turns into three copies of one enum.
    state = ma.fields.String(validate=ma.validate.OneOf(LOCATION_STATES))
    tokenKind = ma.fields.String(allow_none=True, metadata={
        "description": "pit, oauth, agency or minted; null: no token"})
    tokenStatus = ma.fields.String(allow_none=True, metadata={
        "description": "active, invalid or inactive; null: no token"})
    status = ma.fields.String(allow_none=True, metadata={
        "description": "tokenStatus (its name before the directory had states)"})
    expiresAt = ma.fields.AwareDateTime(allow_none=True)
    companyId = ma.fields.String(allow_none=True)
    hasRefreshToken = ma.fields.Boolean()
    lastError = ma.fields.String(allow_none=True, metadata={"description": "the token's"})
    retryAt = ma.fields.AwareDateTime(allow_none=True, metadata={
        "description": "inactive: when the token is tried again"})
    createdAt = ma.fields.AwareDateTime(allow_none=True)
    updatedAt = ma.fields.AwareDateTime(allow_none=True)
    queue = ma.fields.Nested(QueueSchema)
    waitingViews = ma.fields.Integer(metadata={
        "description": "views not sent yet, of pending and blocked documents"})
    deadViews = ma.fields.Integer(metadata={"description": "views of dead documents"})
    delivered = ma.fields.Integer(metadata={
        "description": "views HighLevel has confirmed (a PATCH covers several; the "
                       "delivery log counts the PATCHes)"})
    lastDeliveryAt = ma.fields.AwareDateTime(allow_none=True)
    rateLimit = ma.fields.Nested(RateLimitPauseSchema, allow_none=True, metadata={
        "description": "set while the location's rate-limit budget is spent"})


class LimitsSchema(ma.Schema):
    """The location's rate-limit budget, as the forwarder last learned it."""

    burstMax = ma.fields.Integer()
    intervalMs = ma.fields.Integer()
    used = ma.fields.Integer(metadata={"description": "in the current window"})
    windowEndsAt = ma.fields.AwareDateTime(allow_none=True)
    dailyMax = ma.fields.Integer()
    dailyUsed = ma.fields.Integer()
    dayEndsAt = ma.fields.AwareDateTime(allow_none=True)


class LocationDetailSchema(LocationSchema):
    """A location's page: its directory row, views by verdict, the rate-limit budget, the
    latest attempts, and the app's install link."""

    verdicts = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.Integer(),
                              metadata={"description": "views by verdict"})
    limits = ma.fields.Nested(LimitsSchema, allow_none=True, metadata={
        "description": "null until the forwarder has sent for the location"})
    recentAttempts = ma.fields.List(ma.fields.Nested(DeliverySchema), metadata={
        "description": "the latest attempts, newest first, with HighLevel's message and "
                       "trace id"})
    installUrl = ma.fields.String(allow_none=True, metadata={
        "description": "the HighLevel app's install link (null: OAuth not configured)"})


class LocationListSchema(ma.Schema):
    locations = ma.fields.List(ma.fields.Nested(LocationSchema))
    next = ma.fields.String(allow_none=True, metadata={
        "description": "the cursor of the next page; null on the last"})


class PurgeSchema(ma.Schema):
    """What a purge deleted, per table (all zero when nothing was stored)."""

    locationId = ma.fields.String()
    deleted = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.Integer(), metadata={
        "description": "rows deleted: events, documents, deliveries, notifications, tokens, "
                       "installs, rateLimits, viewCounts, knownLocations, pixelPrefixes"})
