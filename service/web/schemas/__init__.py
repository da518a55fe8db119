"""Marshmallow schemas: request validation and the documented responses, a module per
resource (``events``, ``locations``, ``pixels``, ``deliveries``, ``keys``) and what they share
(``common``). Every public schema is importable from here too."""

from .common import MAX_BIGINT, ErrorSchema, Printable, QuerySchema, Text, UTCDateTime
from .deliveries import (
    DeliveryPageSchema,
    DeliveryQuerySchema,
    DeliverySchema,
    ReplayResultSchema,
    ReplaySchema,
)
from .events import (
    INGEST_BODY,
    MAX_BATCH,
    AcceptedBatchSchema,
    AcceptedSchema,
    EstimateEventSchema,
    EventSchema,
    EventStatusSchema,
    IngestResponseSchema,
    IngestSchema,
    InvoiceEventSchema,
)
from .keys import CreatedKeySchema, KeyCreateSchema, KeyListSchema, KeySchema
from .locations import (
    LocationDetailSchema,
    LocationListSchema,
    LocationQuerySchema,
    LocationSchema,
    PurgeSchema,
    TokenSchema,
)
from .pixels import (
    EstimatePixelUrlRequestSchema,
    InvoicePixelUrlRequestSchema,
    PixelUrlRequestSchema,
    PixelUrlSchema,
)

__all__ = [
    "INGEST_BODY", "MAX_BATCH", "MAX_BIGINT", "AcceptedBatchSchema", "AcceptedSchema",
    "CreatedKeySchema", "DeliveryPageSchema", "DeliveryQuerySchema", "DeliverySchema",
    "ErrorSchema", "EstimateEventSchema", "EstimatePixelUrlRequestSchema", "EventSchema",
    "EventStatusSchema", "IngestResponseSchema", "IngestSchema", "InvoiceEventSchema",
    "InvoicePixelUrlRequestSchema", "KeyCreateSchema", "KeyListSchema", "KeySchema",
    "LocationDetailSchema", "LocationListSchema", "LocationQuerySchema", "LocationSchema",
    "PixelUrlRequestSchema", "PixelUrlSchema", "Printable", "PurgeSchema", "QuerySchema",
    "ReplayResultSchema", "ReplaySchema", "Text", "TokenSchema", "UTCDateTime",
]
