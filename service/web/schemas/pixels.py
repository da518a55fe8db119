"""Pixel URLs: ``POST /v1/pixel-urls``."""

from __future__ import annotations

import marshmallow as ma

from ...ids import Id
from .events import EventSchema


class PixelUrlRequestSchema(ma.Schema):
    """What to mint a pixel for: one invoice or one estimate of a location."""

    # exactly_one_document's rule, as the document states it (see EventSchema).
    OPENAPI_EXTRA = {"oneOf": ["InvoicePixelUrlRequestSchema", "EstimatePixelUrlRequestSchema"]}

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


class InvoicePixelUrlRequestSchema(PixelUrlRequestSchema):
    """An invoice's pixel (the document's model; requests are loaded by the parent)."""

    OPENAPI_EXTRA = None

    class Meta(PixelUrlRequestSchema.Meta):
        exclude = ("estimateId",)

    invoiceId = ma.fields.String(required=True, validate=Id)


class EstimatePixelUrlRequestSchema(PixelUrlRequestSchema):
    """An estimate's pixel."""

    OPENAPI_EXTRA = None

    class Meta(PixelUrlRequestSchema.Meta):
        exclude = ("invoiceId",)

    estimateId = ma.fields.String(required=True, validate=Id)


class PixelUrlSchema(ma.Schema):
    url = ma.fields.String()
    html = ma.fields.String(metadata={"description": "a ready <img> tag for the email"})
    token = ma.fields.String()
    beaconUrl = ma.fields.String(metadata={"description": "for navigator.sendBeacon"})
    script = ma.fields.String(metadata={
        "description": "a ready <script> tag for a portal page: GET /v1/relay.js (versioned) "
                       "with this beaconUrl in data-beacon"})
    expiresAt = ma.fields.AwareDateTime(allow_none=True)
