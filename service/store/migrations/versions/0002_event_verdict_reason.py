"""event verdict reason

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 23:42:04.442972
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('verdict_reason', sa.String(length=100), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_column('verdict_reason')

