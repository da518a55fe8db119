"""The delivery log and dead-letter replay: ``/v1/deliveries``."""

from __future__ import annotations

import marshmallow as ma

from ...ids import Id
from ...store.deliverylog import OUTCOMES
from .common import MAX_BIGINT, QuerySchema, UTCDateTime
from .events import KINDS


class DeliveryQuerySchema(QuerySchema):
    """Filters for the delivery log (query string)."""

    locationId = ma.fields.String(validate=Id)
    documentId = ma.fields.String(validate=Id)
    outcome = ma.fields.String(validate=ma.validate.OneOf(OUTCOMES),
                               metadata={"description": ", ".join(OUTCOMES)})
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
    kind = ma.fields.String(validate=ma.validate.OneOf(KINDS))
    locationId = ma.fields.String()
    documentId = ma.fields.String()
    attempt = ma.fields.Integer()
    outcome = ma.fields.String(validate=ma.validate.OneOf(OUTCOMES))  # dump only: documents
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
    dryRun = ma.fields.Boolean(load_default=False, metadata={
        "description": "count the documents it would re-queue; change nothing"})

    @ma.validates_schema
    def some_filter(self, data, **kwargs):
        if not data.get("all") and not (set(data) - {"all", "dryRun"}):
            raise ma.ValidationError("Give a filter, or all: true to replay every dead view.")


class ReplayResultSchema(ma.Schema):
    replayed = ma.fields.Integer(metadata={
        "description": "documents re-queued (with dryRun: that it would re-queue)"})
