"""Location pixel prefixes: a location's opt-in to pixels for templated emails."""

from __future__ import annotations

import sqlalchemy as sa

from .types import UTCDateTime, metadata

# One row per prefix an admin minted (``store/prefixes.py``). The signed prefix itself is
# never stored: it carries this row's id, the location and the kind, and a pixel under it
# records a view only while its row is here and not revoked.
pixel_prefixes = sa.Table(
    "pixel_prefixes",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),  # random, not secret: it is in the URL
    sa.Column("location_id", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(8), nullable=False),  # invoice | estimate
    sa.Column("name", sa.String(100)),  # the operator's label (which template it is for)
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("revoked_at", UTCDateTime),
    sa.Index("ix_pixel_prefixes_location_id", "location_id"),
)
