"""installs, webhook receipts, token retry

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 00:11:10.636470
"""

import sqlalchemy as sa
from alembic import op

import service.store.db

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('installs',
    sa.Column('target_type', sa.String(length=10), nullable=False),
    sa.Column('target_id', sa.String(length=64), nullable=False),
    sa.Column('company_id', sa.String(length=64), nullable=True),
    sa.Column('status', sa.String(length=12), nullable=False),
    sa.Column('updated_at', service.store.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('target_type', 'target_id', name=op.f('pk_installs'))
    )
    with op.batch_alter_table('installs', schema=None) as batch_op:
        batch_op.create_index('ix_installs_company_id', ['company_id'], unique=False)

    op.create_table('webhook_receipts',
    sa.Column('webhook_id', sa.String(length=100), nullable=False),
    sa.Column('received_at', service.store.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('webhook_id', name=op.f('pk_webhook_receipts'))
    )
    with op.batch_alter_table('webhook_receipts', schema=None) as batch_op:
        batch_op.create_index('ix_webhook_receipts_received_at', ['received_at'], unique=False)

    with op.batch_alter_table('locations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('retry_at', service.store.db.UTCDateTime(timezone=True), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('locations', schema=None) as batch_op:
        batch_op.drop_column('retry_at')

    with op.batch_alter_table('webhook_receipts', schema=None) as batch_op:
        batch_op.drop_index('ix_webhook_receipts_received_at')

    op.drop_table('webhook_receipts')
    with op.batch_alter_table('installs', schema=None) as batch_op:
        batch_op.drop_index('ix_installs_company_id')

    op.drop_table('installs')
