"""location pixel prefixes: pixels for templated emails, opted in per location, revocable

``pixel_prefixes`` holds one row per prefix an admin minted for a location and a document
kind; a pixel URL under the prefix records a view while its row is not revoked. A new
table only: nothing existing changes.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 19:00:00
"""

import sqlalchemy as sa
from alembic import op

from service.store.db import UTCDateTime

revision = '0012'
# 0011 is being added in parallel (issue #16); re-chained when both are merged.
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'pixel_prefixes',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('location_id', sa.String(length=64), nullable=False),
        sa.Column('kind', sa.String(length=8), nullable=False),
        sa.Column('name', sa.String(length=100), nullable=True),
        sa.Column('created_at', UTCDateTime(), nullable=False),
        sa.Column('revoked_at', UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_pixel_prefixes')),
    )
    op.create_index('ix_pixel_prefixes_location_id', 'pixel_prefixes', ['location_id'])


def downgrade() -> None:
    op.drop_index('ix_pixel_prefixes_location_id', table_name='pixel_prefixes')
    op.drop_table('pixel_prefixes')
