"""Events: ``POST /v1/events`` (one, or a batch) and ``GET /v1/events/<id>``."""

from __future__ import annotations

import datetime as dt
import ipaddress

import marshmallow as ma

from ...ids import Id
from ...ingest.verdicts import VERDICTS
from .common import Text, UTCDateTime

MAX_BATCH = 500
FUTURE_TOLERANCE = dt.timedelta(minutes=5)

ACCEPTED_STATUSES = ("queued", "duplicate", "filtered")
EVENT_STATUSES = ("queued", "delivered", "failed", "duplicate", "filtered")
KINDS = ("invoice", "estimate")


def _not_in_future(value: dt.datetime) -> None:
    if value > dt.datetime.now(dt.UTC) + FUTURE_TOLERANCE:
        raise ma.ValidationError("Must not be more than 5 minutes in the future.")


def _ip(value: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ma.ValidationError("Not a valid IP address.") from None


class EventSchema(ma.Schema):
    """One "invoice viewed" (or "estimate viewed") event."""

    # exactly_one_document's rule, as the document states it: one of two schemas, so
    # generated clients get a model for each (InvoiceEvent, EstimateEvent).
    OPENAPI_EXTRA = {"oneOf": ["InvoiceEventSchema", "EstimateEventSchema"]}

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


class InvoiceEventSchema(EventSchema):
    """An invoice's event: ``EventSchema`` with ``invoiceId`` and no ``estimateId`` (the
    document's model; requests are loaded by ``EventSchema``)."""

    OPENAPI_EXTRA = None

    class Meta(EventSchema.Meta):
        exclude = ("estimateId",)

    invoiceId = ma.fields.String(required=True, validate=Id)


class EstimateEventSchema(EventSchema):
    """An estimate's event: ``EventSchema`` with ``estimateId`` and no ``invoiceId``."""

    OPENAPI_EXTRA = None

    class Meta(EventSchema.Meta):
        exclude = ("invoiceId",)

    estimateId = ma.fields.String(required=True, validate=Id)


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


# Response schemas only dump: ``required`` and ``OneOf`` below are what the document
# promises (always present; these values only), which generated clients type on.

class AcceptedSchema(ma.Schema):
    """One accepted event."""

    id = ma.fields.String(required=True,
                          metadata={"description": "the event's id, for GET /v1/events/<id>"})
    status = ma.fields.String(required=True, validate=ma.validate.OneOf(ACCEPTED_STATUSES))


class AcceptedBatchSchema(ma.Schema):
    """A batch's accepted events, in the order they were sent."""

    events = ma.fields.List(ma.fields.Nested(AcceptedSchema), required=True)


class IngestResponseSchema(ma.Schema):
    """A single event's ``id`` and ``status``, or ``events`` for a batch (same order)."""

    OPENAPI_EXTRA = {"oneOf": ["AcceptedSchema", "AcceptedBatchSchema"]}

    id = ma.fields.String()
    status = ma.fields.String()
    events = ma.fields.List(ma.fields.Nested(AcceptedSchema))


class EventStatusSchema(ma.Schema):
    id = ma.fields.String(required=True)
    eventId = ma.fields.String(required=True, allow_none=True)
    kind = ma.fields.String(required=True, validate=ma.validate.OneOf(KINDS))
    locationId = ma.fields.String(required=True)
    documentId = ma.fields.String(required=True)
    status = ma.fields.String(required=True, validate=ma.validate.OneOf(EVENT_STATUSES))
    reason = ma.fields.String(allow_none=True)
    message = ma.fields.String(allow_none=True)
    verdict = ma.fields.String(required=True, validate=ma.validate.OneOf(VERDICTS))
    verdictReason = ma.fields.String(required=True, allow_none=True)
    source = ma.fields.String(required=True, allow_none=True)
    viewedAt = ma.fields.AwareDateTime(required=True)
    receivedAt = ma.fields.AwareDateTime(required=True)
    deliveredAt = ma.fields.AwareDateTime(required=True, allow_none=True)


# POST /v1/events (and /v1/sources/internal) take a batch or one bare event
# (IngestSchema.wrap_single): the request body as the document states it.
INGEST_BODY = {"required": True, "content": {"application/json": {"schema": {"oneOf": [
    "IngestSchema", "InvoiceEventSchema", "EstimateEventSchema"]}}}}
