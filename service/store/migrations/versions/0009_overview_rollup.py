"""overview rollup: stats_hourly, stats_latency, stats_watermark; delivery_log.waited_ms

The operator console's overview (views received, filtered, delivered and failed per hour
over 24 hours and per day over 30 days; view-to-delivery p50/p99) must stay fast with
millions of events and log rows, so the forwarders fold both into hourly counts off the
ingest path (``service/store/rollup.py``). ``waited_ms`` records, on each attempt, how
long the document's first waiting view had waited; older rows keep it null.

Nothing is backfilled here: the first fold after the upgrade counts the last 30 days
from the rows still kept.

Revision ID: 0009
Revises: 0010
Create Date: 2026-12-09 10:00:00
"""

import sqlalchemy as sa
from alembic import op

import service.store.db

revision = '0009'
# After main's 0010 (operator notifications) so the branch has one head; renumber at merge.
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('delivery_log', schema=None) as batch_op:
        batch_op.add_column(sa.Column('waited_ms', sa.BigInteger(), nullable=True))
    op.create_table(
        'stats_hourly',
        sa.Column('hour', service.store.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column('received', sa.BigInteger(), nullable=False),
        sa.Column('filtered', sa.BigInteger(), nullable=False),
        sa.Column('delivered', sa.BigInteger(), nullable=False),
        sa.Column('failed', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('hour', name=op.f('pk_stats_hourly')),
    )
    op.create_table(
        'stats_latency',
        sa.Column('hour', service.store.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column('waited_ms', sa.BigInteger(), nullable=False),
        sa.Column('deliveries', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('hour', 'waited_ms', name=op.f('pk_stats_latency')),
    )
    op.create_table(
        'stats_watermark',
        sa.Column('name', sa.String(length=20), nullable=False),
        sa.Column('folded_to', service.store.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column('idle_documents', sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint('name', name=op.f('pk_stats_watermark')),
    )


def downgrade() -> None:
    op.drop_table('stats_watermark')
    op.drop_table('stats_latency')
    op.drop_table('stats_hourly')
    with op.batch_alter_table('delivery_log', schema=None) as batch_op:
        batch_op.drop_column('waited_ms')
