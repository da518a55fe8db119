"""api keys kept in the store: hashed, with scopes and an optional list of locations

New table only: nothing existing changes. Environment keys (INGEST_API_KEYS,
ADMIN_API_KEYS) keep working beside these.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 19:00:00
"""

import sqlalchemy as sa
from alembic import op

from service.store.db import UTCDateTime

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        'api_keys',
        sa.Column('id', BigId, autoincrement=True, nullable=False),
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('prefix', sa.String(length=16), nullable=False),
        sa.Column('hash', sa.String(length=64), nullable=False),
        sa.Column('scopes', sa.String(length=100), nullable=False),
        sa.Column('locations', sa.Text(), nullable=True),
        sa.Column('created_at', UTCDateTime(), nullable=False),
        sa.Column('last_used_at', UTCDateTime(), nullable=True),
        sa.Column('revoked_at', UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys')),
        sa.UniqueConstraint('hash', name=op.f('uq_api_keys_hash')),
    )


def downgrade() -> None:
    op.drop_table('api_keys')
