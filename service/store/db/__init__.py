"""The tables (SQLAlchemy Core), on one ``metadata``, a module per part of the store; the
engine and migrations are in ``service.store.engine``. Everything is importable from here."""

from __future__ import annotations

from .core import (
    delivery_log,
    documents,
    events,
    installs,
    locations,
    rate_limits,
    used_webhook_tokens,
    webhook_receipts,
)
from .keys import api_keys
from .outbox import (
    no_token_alerts,
    notification_attempts,
    notification_deliveries,
    notifications,
)
from .overview import (
    known_locations,
    rollups,
    stats_hourly,
    stats_latency,
    stats_watermark,
    view_counts,
)
from .prefixes import pixel_prefixes
from .types import BigId, UTCDateTime, metadata

__all__ = [
    "BigId",
    "UTCDateTime",
    "metadata",
    "documents",
    "events",
    "locations",
    "delivery_log",
    "rate_limits",
    "installs",
    "webhook_receipts",
    "used_webhook_tokens",
    "notifications",
    "notification_deliveries",
    "notification_attempts",
    "no_token_alerts",
    "stats_hourly",
    "stats_latency",
    "stats_watermark",
    "known_locations",
    "view_counts",
    "rollups",
    "pixel_prefixes",
    "api_keys",
]
