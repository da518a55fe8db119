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
    EXACTLY_ONE_DOCUMENT,
    MAX_BATCH,
    AcceptedSchema,
    EventSchema,
    EventStatusSchema,
    IngestResponseSchema,
    IngestSchema,
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
from .pixels import PixelUrlRequestSchema, PixelUrlSchema

__all__ = [
    "EXACTLY_ONE_DOCUMENT", "MAX_BATCH", "MAX_BIGINT", "AcceptedSchema", "DeliveryPageSchema",
    "DeliveryQuerySchema", "DeliverySchema", "ErrorSchema", "EventSchema", "EventStatusSchema",
    "IngestResponseSchema", "IngestSchema", "CreatedKeySchema", "KeyCreateSchema",
    "KeyListSchema", "KeySchema", "LocationDetailSchema", "LocationListSchema",
    "LocationQuerySchema", "LocationSchema",
    "PixelUrlRequestSchema", "PixelUrlSchema", "Printable", "PurgeSchema", "QuerySchema",
    "ReplayResultSchema", "ReplaySchema", "Text", "TokenSchema", "UTCDateTime",
]
