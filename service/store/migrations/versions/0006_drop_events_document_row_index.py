"""drop ix_events_document_row_seq

No query looks events up by their document row (event status reads by id, then the
document by its primary key), and on SQLite the index cost every recorded view ~25 us in
its commit: one more B-tree page, at a random place, to write and fsync.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 03:20:00
"""

from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index('ix_events_document_row_seq')


def downgrade() -> None:
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index('ix_events_document_row_seq', ['document_row', 'seq'],
                              unique=False)
