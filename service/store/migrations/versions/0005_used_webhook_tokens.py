"""used webhook tokens

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 00:12:14.384951
"""

import sqlalchemy as sa
from alembic import op

import service.store.db

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('used_webhook_tokens',
    sa.Column('token', sa.String(length=64), nullable=False),
    sa.Column('seen_at', service.store.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('token', name=op.f('pk_used_webhook_tokens'))
    )
    with op.batch_alter_table('used_webhook_tokens', schema=None) as batch_op:
        batch_op.create_index('ix_used_webhook_tokens_seen_at', ['seen_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('used_webhook_tokens', schema=None) as batch_op:
        batch_op.drop_index('ix_used_webhook_tokens_seen_at')

    op.drop_table('used_webhook_tokens')
