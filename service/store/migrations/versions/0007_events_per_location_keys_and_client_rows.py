"""events: idempotency keys per location; one row per client, document and window

An ``eventId`` was one global namespace: a second tenant's event with the same key was
answered ``duplicate`` with the first tenant's event id and never stored. Keys are now
unique per (location_id, event_key), a partial index (pixel views carry no key).

Repeated pixel views from one client within the coalescing window add to ``views`` on
the row already stored instead of adding a row each (each web process remembers the rows
its clients stored in the current window: no index, no look-up in the write).

Existing rows are kept: on SQLite the table is rebuilt (batch mode copies every row) to
drop the old UNIQUE(event_key), which SQLite cannot drop in place.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 13:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

_KEYED = sa.text("event_key IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('views', sa.Integer(), server_default='1', nullable=False))
        batch_op.drop_constraint('uq_events_event_key', type_='unique')
        batch_op.create_index('uq_events_location_id_event_key', ['location_id', 'event_key'],
                              unique=True, sqlite_where=_KEYED, postgresql_where=_KEYED)


def downgrade() -> None:
    # Going back to one global namespace fails (as it should) if two locations now hold
    # the same key; folded repeats stay one row each.
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index('uq_events_location_id_event_key')
        batch_op.create_unique_constraint('uq_events_event_key', ['event_key'])
        batch_op.drop_column('views')
