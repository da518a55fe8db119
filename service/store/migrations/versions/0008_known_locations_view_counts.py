"""known_locations, view_counts, rollups: the locations directory without reading every
event or document

The directory lists every location with a token or views; a location's page shows its
views by verdict. Events have no index by location (each costs every pixel view,
migration 0006), and walking the documents' distinct locations costs a probe per
location, so the forwarder now keeps ``known_locations`` (every location it has tried or
counted) and ``view_counts`` (views per location and verdict, counted once events are a
few minutes old, as far as ``rollups`` says).

The locations of existing documents are copied here; existing events are counted by the
first forwarder that runs after this migration (in batches).

Revision ID: 0008
Revises: 0010
Create Date: 2026-12-07 16:30:00
"""

import sqlalchemy as sa
from alembic import op

import service.store.db

revision = '0008'
# After main's 0010 (operator notifications), so the migrations have one head.
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('known_locations',
    sa.Column('location_id', sa.String(length=64), nullable=False),
    sa.Column('first_seen_at', service.store.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('location_id', name=op.f('pk_known_locations'))
    )
    op.create_table('view_counts',
    sa.Column('location_id', sa.String(length=64), nullable=False),
    sa.Column('verdict', sa.String(length=20), nullable=False),
    sa.Column('views', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('location_id', 'verdict', name=op.f('pk_view_counts'))
    )
    op.create_table('rollups',
    sa.Column('name', sa.String(length=32), nullable=False),
    sa.Column('through_id', sa.String(length=36), nullable=False),
    sa.Column('updated_at', service.store.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_rollups'))
    )
    op.execute("INSERT INTO known_locations (location_id, first_seen_at) "
               "SELECT location_id, min(updated_at) FROM documents GROUP BY location_id")


def downgrade() -> None:
    op.drop_table('rollups')
    op.drop_table('view_counts')
    op.drop_table('known_locations')
