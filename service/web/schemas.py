"""Marshmallow schemas: request validation and the documented responses, in one place."""

from __future__ import annotations

import datetime as dt
import ipaddress

import marshmallow as ma

from ..ids import FullMatch, Id

MAX_BATCH = 500
MAX_BIGINT = 2**63 - 1
FUTURE_TOLERANCE = dt.timedelta(minutes=5)

# Tokens go into an HTTP header: printable ASCII, no spaces or line breaks.
Printable = FullMatch(r"^[\x21-\x7e]+$",
                      error="Must be printable ASCII without spaces or line breaks.")


# Free text that either store can hold: PostgreSQL refuses NUL in text, and a lone surrogate
# (JSON can carry "\ud800") is not UTF-8 for either store: both failed as a 500.
NoNul = FullMatch(r"^[^\x00]*$", error="Must not contain NUL characters.")


def _encodable(value: str) -> None:
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ma.ValidationError("Must be valid Unicode text.") from None


Text = [NoNul, _encodable]

# The rule EventSchema.exactly_one_document enforces, as the document states it.
EXACTLY_ONE_DOCUMENT = {"oneOf": [{"required": ["invoiceId"]}, {"required": ["estimateId"]}]}


def _not_in_future(value: dt.datetime) -> None:
    if value > dt.datetime.now(dt.UTC) + FUTURE_TOLERANCE:
        raise ma.ValidationError("Must not be more than 5 minutes in the future.")


class UTCDateTime(ma.fields.AwareDateTime):
    """An ISO 8601 time (taken as UTC when it has no offset), loaded as UTC. A time that does
    not exist in UTC (0001-01-01T00:00:00+05:00 falls in year 0) is invalid, not a 500."""

    def __init__(self, **kwargs):
        super().__init__(default_timezone=dt.UTC, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs) -> dt.datetime:
        loaded = super()._deserialize(value, attr, data, **kwargs)
        try:
            return loaded.astimezone(dt.UTC)
        except OverflowError:
            raise self.make_error("invalid", input=value, obj_type=self.OBJ_TYPE) from None


def _ip(value: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ma.ValidationError("Not a valid IP address.") from None


class EventSchema(ma.Schema):
    """One "invoice viewed" (or "estimate viewed") event."""

    OPENAPI_EXTRA = EXACTLY_ONE_DOCUMENT

    class Meta:
        unknown = ma.RAISE

    locationId = ma.fields.String(required=True, validate=Id)
    invoiceId = ma.fields.String(validate=Id)
    estimateId = ma.fields.String(validate=Id)
    viewedAt = UTCDateTime(validate=_not_in_future,
                           metadata={"description": "ISO 8601; default: now"})
    eventId = ma.fields.String(validate=Id, metadata={"description": "idempotency key"})
    source = ma.fields.String(validate=[ma.validate.Length(max=64), *Text])
    userAgent = ma.fields.String(validate=[ma.validate.Length(max=512), *Text])
    ip = ma.fields.String(validate=[*Text, _ip], metadata={
        "description": "IPv4 or IPv6 address", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]})

    @ma.validates_schema
    def exactly_one_document(self, data, **kwargs):
        if ("invoiceId" in data) == ("estimateId" in data):
            raise ma.ValidationError("Give exactly one of invoiceId or estimateId.",
                                     "invoiceId" if "invoiceId" not in data else "_schema")


class IngestSchema(ma.Schema):
    """A batch ``{"events": [...]}`` of 1-500 events, or one bare event."""

    class Meta:
        unknown = ma.RAISE

    events = ma.fields.List(ma.fields.Nested(EventSchema), required=True,
                            validate=ma.validate.Length(min=1, max=MAX_BATCH))

    @ma.pre_load
    def wrap_single(self, data, **kwargs):
        if isinstance(data, dict) and "events" not in data:
            return {"events": [data]}
        return data

    def handle_error(self, error, data, *, many, **kwargs):
        # A bare event's errors are reported per field, not under events.0.
        if isinstance(data, dict) and "events" not in data:
            nested = error.messages.get("events", {}) if isinstance(error.messages, dict) else {}
            if isinstance(nested, dict) and 0 in nested:
                raise ma.ValidationError(nested[0]) from error
        raise error


class AcceptedSchema(ma.Schema):
    id = ma.fields.String(metadata={"description": "the event's id, for GET /v1/events/<id>"})
    status = ma.fields.String(metadata={"description": "queued, duplicate or filtered"})


class IngestResponseSchema(AcceptedSchema):
    """A single event's ``id`` and ``status``, or ``events`` for a batch (same order)."""

    events = ma.fields.List(ma.fields.Nested(AcceptedSchema))


class EventStatusSchema(ma.Schema):
    id = ma.fields.String()
    eventId = ma.fields.String(allow_none=True)
    kind = ma.fields.String()
    locationId = ma.fields.String()
    documentId = ma.fields.String()
    status = ma.fields.String(
        metadata={"description": "queued, delivered, failed, duplicate or filtered"})
    reason = ma.fields.String(allow_none=True)
    message = ma.fields.String(allow_none=True)
    verdict = ma.fields.String(
        metadata={"description": "human, proxy_open, machine_prefetch, scanner or bot"})
    verdictReason = ma.fields.String(allow_none=True)
    source = ma.fields.String(allow_none=True)
    viewedAt = ma.fields.AwareDateTime()
    receivedAt = ma.fields.AwareDateTime()
    deliveredAt = ma.fields.AwareDateTime(allow_none=True)


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
        "description": "rows deleted: events, documents, deliveries, notifications, tokens, "
                       "installs, rateLimits"})


class ErrorSchema(ma.Schema):
    statusCode = ma.fields.Integer()
    message = ma.fields.String()
    errors = ma.fields.Dict()


class PixelUrlRequestSchema(ma.Schema):
    """What to mint a pixel for: one invoice or one estimate of a location."""

    OPENAPI_EXTRA = EXACTLY_ONE_DOCUMENT

    class Meta:
        unknown = ma.RAISE

    locationId = ma.fields.String(required=True, validate=Id)
    invoiceId = ma.fields.String(validate=Id)
    estimateId = ma.fields.String(validate=Id)
    expiresIn = ma.fields.Integer(validate=ma.validate.Range(min=60, max=10 * 365 * 86400),
                                  metadata={"description": "seconds; default: never expires"})

    @ma.validates_schema
    def exactly_one_document(self, data, **kwargs):
        EventSchema.exactly_one_document(self, data)


class PixelUrlSchema(ma.Schema):
    url = ma.fields.String()
    html = ma.fields.String(metadata={"description": "a ready <img> tag for the email"})
    token = ma.fields.String()
    beaconUrl = ma.fields.String(metadata={"description": "for navigator.sendBeacon"})
    expiresAt = ma.fields.AwareDateTime(allow_none=True)


class DeliveryQuerySchema(ma.Schema):
    """Filters for the delivery log (query string)."""

    class Meta:
        unknown = ma.RAISE

    locationId = ma.fields.String(validate=Id)
    documentId = ma.fields.String(validate=Id)
    outcome = ma.fields.String(validate=[ma.validate.Length(max=20), *Text])
    since = UTCDateTime()
    until = UTCDateTime()
    # Bounded by the id column (BIGINT, SQLite's INTEGER): a larger number would reach the
    # database and fail there (OverflowError: a 500) instead of answering 422.
    cursor = ma.fields.Integer(validate=ma.validate.Range(min=1, max=MAX_BIGINT),
                               metadata={"description": "nextCursor of the previous page"})
    limit = ma.fields.Integer(load_default=100, validate=ma.validate.Range(min=1, max=500))


class DeliverySchema(ma.Schema):
    id = ma.fields.Integer()
    at = ma.fields.AwareDateTime()
    kind = ma.fields.String()
    locationId = ma.fields.String()
    documentId = ma.fields.String()
    attempt = ma.fields.Integer()
    outcome = ma.fields.String(metadata={"description": (
        "delivered, retry, rate_limited, network_error, unauthorized, permanent, expired, "
        "no_token, token_invalid, token_unreadable")})
    httpStatus = ma.fields.Integer(allow_none=True)
    message = ma.fields.String(allow_none=True, metadata={"description": "HighLevel's message"})
    traceId = ma.fields.String(allow_none=True)
    latencyMs = ma.fields.Integer(allow_none=True)
    viewsCovered = ma.fields.Integer()
    requestId = ma.fields.String(allow_none=True)


class DeliveryPageSchema(ma.Schema):
    deliveries = ma.fields.List(ma.fields.Nested(DeliverySchema))
    nextCursor = ma.fields.Integer(allow_none=True)


class ReplaySchema(ma.Schema):
    """Which dead documents to re-queue: at least one filter, or ``all``."""

    class Meta:
        unknown = ma.RAISE

    locationId = ma.fields.String(validate=Id)
    documentId = ma.fields.String(validate=Id)
    outcome = ma.fields.String(validate=ma.validate.OneOf(["permanent", "expired"]),
                               metadata={"description": "why it died"})
    since = UTCDateTime()
    until = UTCDateTime()
    all = ma.fields.Boolean(load_default=False)

    @ma.validates_schema
    def some_filter(self, data, **kwargs):
        if not data.get("all") and not (set(data) - {"all"}):
            raise ma.ValidationError("Give a filter, or all: true to replay every dead view.")


class ReplayResultSchema(ma.Schema):
    replayed = ma.fields.Integer(metadata={"description": "documents re-queued"})
