"""rate limits

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 23:51:37.335675
"""

import sqlalchemy as sa
from alembic import op

import service.store.db

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('rate_limits',
    sa.Column('resource', sa.String(length=64), nullable=False),
    sa.Column('burst_max', sa.Integer(), nullable=False),
    sa.Column('interval_ms', sa.Integer(), nullable=False),
    sa.Column('daily_max', sa.Integer(), nullable=False),
    sa.Column('used', sa.Integer(), nullable=False),
    sa.Column('window_ends_at', service.store.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('daily_used', sa.Integer(), nullable=False),
    sa.Column('day_ends_at', service.store.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('paused_until', service.store.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('pause_reason', sa.String(length=10), nullable=True),
    sa.Column('updated_at', service.store.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('resource', name=op.f('pk_rate_limits'))
    )
    with op.batch_alter_table('rate_limits', schema=None) as batch_op:
        batch_op.create_index('ix_rate_limits_paused_until', ['paused_until'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('rate_limits', schema=None) as batch_op:
        batch_op.drop_index('ix_rate_limits_paused_until')

    op.drop_table('rate_limits')
