"""API keys kept in the store: hashed, with scopes (``service/store/apikeys.py``)."""

from __future__ import annotations

import sqlalchemy as sa

from .types import BigId, UTCDateTime, metadata

# One row per key made by ``POST /v1/keys``, ``flask keys create`` or the console. The key
# itself is never stored: ``hash`` is the SHA-256 (hex) of the whole key. Keys are 256
# random bits, so no password hash (bcrypt, argon2) is needed: nothing can be guessed that
# a slow hash would protect, and a fast one keeps every request's lookup cheap (GitHub's and
# Stripe's tokens are checked the same way). ``prefix`` is the key's first characters, shown
# so a person can tell keys apart. Revoked rows stay, with ``revoked_at``, for the record.
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False, unique=True),
    sa.Column("scopes", sa.String(100), nullable=False),  # space-separated
    sa.Column("locations", sa.Text),  # space-separated ids; NULL: every location
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("last_used_at", UTCDateTime),  # moved at most once a minute
    sa.Column("revoked_at", UTCDateTime),
)
