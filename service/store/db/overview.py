"""Derived tables the console reads: the hourly rollup, its watermark, the locations
directory and the per-location view counts."""

from __future__ import annotations

import sqlalchemy as sa

from .types import UTCDateTime, metadata

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
