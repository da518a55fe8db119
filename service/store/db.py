"""The tables (SQLAlchemy Core), on one ``metadata``; the engine and migrations are in
``engine``."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa


class UTCDateTime(sa.TypeDecorator):
    """A timestamp that is always timezone-aware UTC in Python, on SQLite too."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrements INTEGER

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
    }
)

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

# The overview's rollup (``rollup``): views and deliveries counted per UTC hour, folded in
# by the forwarders from the events and the delivery log up to ``stats_watermark``; what
# came after it is counted live when read, so the overview is exact and stays cheap.
stats_hourly = sa.Table(
    "stats_hourly",
    metadata,
    sa.Column("hour", UTCDateTime, primary_key=True),
    sa.Column("received", sa.BigInteger, nullable=False),  # views (events.views)
    sa.Column("filtered", sa.BigInteger, nullable=False),  # of them not forwarded
    sa.Column("delivered", sa.BigInteger, nullable=False),  # views a 2xx send covered
    sa.Column("failed", sa.BigInteger, nullable=False),  # views a send made dead
)

# Successful sends per hour by how long their views waited (``waited_ms`` rounded to two
# significant digits): the view-to-delivery percentiles without reading the log.
stats_latency = sa.Table(
    "stats_latency",
    metadata,
    sa.Column("hour", UTCDateTime, primary_key=True),
    sa.Column("waited_ms", sa.BigInteger, primary_key=True),
    sa.Column("deliveries", sa.BigInteger, nullable=False),
)

# How far the rollup has folded (exclusive): one row per rollup, moved only forward, in
# the transaction that adds the counts, so two forwarders never fold a range twice.
stats_watermark = sa.Table(
    "stats_watermark",
    metadata,
    sa.Column("name", sa.String(20), primary_key=True),
    sa.Column("folded_to", UTCDateTime, nullable=False),
    # Documents idle when it last moved: the one count that grows with every document
    # ever viewed, so it is counted by the forwarders' fold, not by each page view.
    sa.Column("idle_documents", sa.BigInteger),
)

# Every location with views, as the forwarder has seen them (a location with a token is in
# ``locations``): added when it tries a location's documents, or counts its views. The
# locations directory pages through it and ``locations`` (``seen``, ``directory``).
known_locations = sa.Table(
    "known_locations",
    metadata,
    sa.Column("location_id", sa.String(64), primary_key=True),
    sa.Column("first_seen_at", UTCDateTime, nullable=False),
)

# Views per location and verdict, counted off the ingest path: the forwarder adds events
# once they are a few minutes old (``seen.count_new``) and a read adds the newer ones, so
# a location's page never reads every event (events have no index by location).
view_counts = sa.Table(
    "view_counts",
    metadata,
    sa.Column("location_id", sa.String(64), primary_key=True),
    sa.Column("verdict", sa.String(20), primary_key=True),
    sa.Column("views", sa.BigInteger, nullable=False),
)

# How far each roll-up over the time-ordered events has got: the last event id it counted.
rollups = sa.Table(
    "rollups",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("through_id", sa.String(36), nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)
