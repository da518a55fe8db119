"""The relay's own state: documents (the queue), events, locations (the token vault),
the delivery log, rate limits, installs and the app webhooks' receipts."""

from __future__ import annotations

import sqlalchemy as sa

from .types import BigId, UTCDateTime, metadata

# One row per (kind, location, document): the coalescing queue entry.
# views_seq counts every view recorded; claimed_seq is what the in-flight send
# covers; sent_seq what HighLevel has confirmed; failed_seq what went dead.
documents = sa.Table(
    "documents",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(8), nullable=False),
    sa.Column("location_id", sa.String(64), nullable=False),
    sa.Column("document_id", sa.String(64), nullable=False),
    # pending | idle | blocked | dead
    sa.Column("status", sa.String(10), nullable=False),
    sa.Column("views_seq", sa.Integer, nullable=False, server_default="0"),
    sa.Column("claimed_seq", sa.Integer, nullable=False, server_default="0"),
    sa.Column("sent_seq", sa.Integer, nullable=False, server_default="0"),
    sa.Column("failed_seq", sa.Integer, nullable=False, server_default="0"),
    sa.Column("due_at", UTCDateTime, nullable=False),
    sa.Column("locked_until", UTCDateTime),
    sa.Column("lease_token", sa.String(32)),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("pending_since", UTCDateTime),
    sa.Column("last_attempt_at", UTCDateTime),
    sa.Column("last_sent_at", UTCDateTime),
    # End of the coalescing window after the last send: a new view waits until then.
    sa.Column("quiet_until", UTCDateTime),
    sa.Column("last_status", sa.Integer),
    sa.Column("last_error", sa.String(500)),
    sa.Column("dead_reason", sa.String(20)),
    sa.Column("last_request_id", sa.String(64)),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("kind", "location_id", "document_id"),
    sa.Index("ix_documents_status_due_at", "status", "due_at"),
    sa.Index("ix_documents_location_id_status", "location_id", "status"),
)

# One row per accepted view (or per idempotent event).
events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    # The caller's idempotency key (``eventId``), unique per location (see the indexes).
    sa.Column("event_key", sa.String(64)),
    # Both null for a view that is recorded but not forwarded (filtered).
    sa.Column("document_row", BigId, sa.ForeignKey("documents.id")),
    sa.Column("seq", sa.Integer),
    sa.Column("kind", sa.String(8), nullable=False),
    sa.Column("location_id", sa.String(64), nullable=False),
    sa.Column("document_id", sa.String(64), nullable=False),
    sa.Column("viewed_at", UTCDateTime, nullable=False),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.Column("source", sa.String(64)),
    sa.Column("user_agent", sa.String(512)),
    sa.Column("ip", sa.String(64)),
    sa.Column("verdict", sa.String(20), nullable=False, server_default="human"),
    sa.Column("verdict_reason", sa.String(100)),
    sa.Column("forward", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("request_id", sa.String(64)),
    # How many views this row stands for: repeats of one document from one client within
    # one coalescing window add here instead of adding rows (``clients.RecentClients``).
    sa.Column("views", sa.Integer, nullable=False, server_default="1"),
    # Idempotency keys are one namespace per location (a key of another tenant never
    # answers for this one); partial, so rows without a key (every pixel view) cost it
    # nothing.
    sa.Index("uq_events_location_id_event_key", "location_id", "event_key", unique=True,
             sqlite_where=sa.text("event_key IS NOT NULL"),
             postgresql_where=sa.text("event_key IS NOT NULL")),
    # No other index: each costs every pixel view a B-tree page, at a random place, in its
    # commit (migration 0006). Pruning and purges walk the time-ordered primary key.
)

# One row per location (or company): the token HighLevel calls use, encrypted.
locations = sa.Table(
    "locations",
    metadata,
    sa.Column("location_id", sa.String(64), primary_key=True),
    # pit (Private Integration Token) | oauth
    sa.Column("token_kind", sa.String(10), nullable=False),
    sa.Column("access_token", sa.Text, nullable=False),
    sa.Column("refresh_token", sa.Text),
    sa.Column("expires_at", UTCDateTime),
    sa.Column("company_id", sa.String(64)),
    # active | invalid
    sa.Column("status", sa.String(10), nullable=False),
    # Bumped each time a new token is stored, so a late 401 for an old token
    # never counts against its replacement.
    sa.Column("generation", sa.Integer, nullable=False, server_default="1"),
    sa.Column("unauthorized_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_error", sa.String(500)),
    # An OAuth refresh answered "Location is not active": keep the refresh token, and
    # try again after this time (views stay parked meanwhile).
    sa.Column("retry_at", UTCDateTime),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# One row per send attempt: what was sent, what HighLevel said, how long it took.
delivery_log = sa.Table(
    "delivery_log",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("document_row", BigId, nullable=False),
    sa.Column("kind", sa.String(8), nullable=False),
    sa.Column("location_id", sa.String(64), nullable=False),
    sa.Column("document_id", sa.String(64), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("outcome", sa.String(20), nullable=False),
    sa.Column("http_status", sa.Integer),
    sa.Column("message", sa.String(500)),
    sa.Column("trace_id", sa.String(64)),
    sa.Column("latency_ms", sa.Integer),
    sa.Column("views_covered", sa.Integer, nullable=False),
    sa.Column("seq_to", sa.Integer, nullable=False),
    sa.Column("request_id", sa.String(64)),
    # From the document's first waiting view (``documents.pending_since``) to this answer:
    # the overview's view-to-delivery latency (``rollup``). Null on rows older than 0009.
    sa.Column("waited_ms", sa.BigInteger),
    sa.Index("ix_delivery_log_document_row_seq_to", "document_row", "seq_to"),
    sa.Index("ix_delivery_log_location_id_id", "location_id", "id"),
    sa.Index("ix_delivery_log_at", "at"),
)


# One row per rate-limited resource (a location, or a company for agency tokens):
# the budget every forwarder process draws from (service/ratelimit.py).
rate_limits = sa.Table(
    "rate_limits",
    metadata,
    sa.Column("resource", sa.String(64), primary_key=True),
    sa.Column("burst_max", sa.Integer, nullable=False),
    sa.Column("interval_ms", sa.Integer, nullable=False),
    sa.Column("daily_max", sa.Integer, nullable=False),
    sa.Column("used", sa.Integer, nullable=False),
    sa.Column("window_ends_at", UTCDateTime),
    sa.Column("daily_used", sa.Integer, nullable=False),
    sa.Column("day_ends_at", UTCDateTime),
    sa.Column("paused_until", UTCDateTime),
    sa.Column("pause_reason", sa.String(10)),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    # our sends in flight and answered within the last interval (service.store.budget)
    sa.Column("sends", sa.Text),
    # batches in a row that only failed transiently: > 0 while HighLevel is probed
    sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
    sa.Index("ix_rate_limits_paused_until", "paused_until"),
)


# Where the HighLevel app is installed (from OAuth installs and INSTALL webhooks): a
# location's company lets an agency token mint a token for it.
installs = sa.Table(
    "installs",
    metadata,
    sa.Column("target_type", sa.String(10), primary_key=True),  # location | company
    sa.Column("target_id", sa.String(64), primary_key=True),
    sa.Column("company_id", sa.String(64)),
    sa.Column("status", sa.String(12), nullable=False),  # installed | uninstalled
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Index("ix_installs_company_id", "company_id"),
)

# HighLevel webhook ids already handled (replay protection), pruned after a day.
webhook_receipts = sa.Table(
    "webhook_receipts",
    metadata,
    sa.Column("webhook_id", sa.String(100), primary_key=True),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.Index("ix_webhook_receipts_received_at", "received_at"),
)

# Email providers' signature tokens already accepted (Mailgun signs only timestamp + token,
# so each token is good once), as sha256 hex; pruned once older than any replay could be.
used_webhook_tokens = sa.Table(
    "used_webhook_tokens",
    metadata,
    sa.Column("token", sa.String(64), primary_key=True),
    sa.Column("seen_at", UTCDateTime, nullable=False),
    sa.Index("ix_used_webhook_tokens_seen_at", "seen_at"),
)
