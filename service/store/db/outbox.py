"""The operator notifications' outbox: notifications, a delivery per destination, its
attempts, and the no-token alerts already sent."""

from __future__ import annotations

import sqlalchemy as sa

from .types import BigId, UTCDateTime, metadata

# Operator notifications: a transactional outbox (service/store/outbox.py writes a row in the
# transaction of the change it reports; service/forward/notify.py sends it). ``payload`` is
# the webhook body exactly as signed; ``message_id`` its ``webhook-id``.
notifications = sa.Table(
    "notifications",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("message_id", sa.String(40), nullable=False),
    sa.Column("type", sa.String(32), nullable=False),  # token.invalid | views.dead | ...
    sa.Column("location_id", sa.String(64), nullable=False),
    # Set where an event must be told once however many processes see it (a token turning
    # invalid: location, token stored, generation); a second insert with it adds nothing.
    sa.Column("dedup_key", sa.String(200)),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    # When a sender made one delivery per configured URL for it (null: not yet).
    sa.Column("fanned_out_at", UTCDateTime),
    sa.UniqueConstraint("message_id"),
    sa.UniqueConstraint("dedup_key"),
    sa.Index("ix_notifications_fanned_out_at", "fanned_out_at"),
    sa.Index("ix_notifications_location_id_id", "location_id", "id"),
    sa.Index("ix_notifications_created_at", "created_at"),
)

# One row per (notification, destination): its delivery state. A destination is a digest of
# its OPERATOR_WEBHOOK_URLS entry, never the URL (a URL can carry a secret in its path);
# ``host`` is what logs and pages show.
notification_deliveries = sa.Table(
    "notification_deliveries",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("notification_id", BigId, sa.ForeignKey("notifications.id"), nullable=False),
    sa.Column("destination", sa.String(16), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("status", sa.String(10), nullable=False),  # pending | delivered | failed
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", UTCDateTime, nullable=False),
    sa.Column("locked_until", UTCDateTime),
    sa.Column("lease_token", sa.String(32)),
    sa.Column("last_attempt_at", UTCDateTime),
    sa.Column("last_status", sa.Integer),
    sa.Column("last_error", sa.String(200)),
    sa.Column("delivered_at", UTCDateTime),
    sa.UniqueConstraint("notification_id", "destination"),
    sa.Index("ix_notification_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
)

# One row per POST of a notification to a destination: when, what came back.
notification_attempts = sa.Table(
    "notification_attempts",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("delivery_id", BigId, sa.ForeignKey("notification_deliveries.id"),
              nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("outcome", sa.String(10), nullable=False),  # delivered | retry | failed
    sa.Column("http_status", sa.Integer),
    sa.Column("error", sa.String(200)),
    sa.Column("latency_ms", sa.Integer),
    sa.Index("ix_notification_attempts_delivery_id", "delivery_id"),
)

# Locations already told about (``location.no_token``) for the episode of parked views
# they are in; the row goes when the location has no parked views left (re-armed).
no_token_alerts = sa.Table(
    "no_token_alerts",
    metadata,
    sa.Column("location_id", sa.String(64), primary_key=True),
    sa.Column("waiting_since", UTCDateTime, nullable=False),
    sa.Column("notified_at", UTCDateTime, nullable=False),
)
