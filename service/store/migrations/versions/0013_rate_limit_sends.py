"""rate limits count our own sends, and probe a failing location

``rate_limits.sends`` keeps each resource's sends in flight and answered within the
last interval (the budget counts them instead of guessing HighLevel's window);
``rate_limits.failures`` counts batches in a row that only failed transiently (while it
is above 0 the location is probed with one send at a time). New columns only.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 19:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0013'
# Other parts of issue #17 may add a 0013 in parallel: re-chained when merged.
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('rate_limits', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sends', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('failures', sa.Integer(), nullable=False,
                                      server_default='0'))


def downgrade() -> None:
    with op.batch_alter_table('rate_limits', schema=None) as batch_op:
        batch_op.drop_column('failures')
        batch_op.drop_column('sends')
