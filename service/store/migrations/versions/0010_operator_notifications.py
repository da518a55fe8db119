"""operator notifications: an outbox, deliveries per destination, attempts, no-token episodes

``notifications`` is a transactional outbox: a row is written in the transaction of the
change it reports (a token turning invalid, views going dead, views parked without a token
for too long), and the forwarder's sender posts it to each OPERATOR_WEBHOOK_URLS entry
(``notification_deliveries``), recording every attempt (``notification_attempts``).
``no_token_alerts`` remembers which locations were told about their parked views, until
they have none left. New tables only: nothing existing changes.

Revision ID: 0010
Revises: 0007
Create Date: 2026-12-07 16:00:00
"""

import sqlalchemy as sa
from alembic import op

from service.store.db import UTCDateTime

revision = '0010'
down_revision = '0007'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        'notifications',
        sa.Column('id', BigId, autoincrement=True, nullable=False),
        sa.Column('message_id', sa.String(length=40), nullable=False),
        sa.Column('type', sa.String(length=32), nullable=False),
        sa.Column('location_id', sa.String(length=64), nullable=False),
        sa.Column('dedup_key', sa.String(length=200), nullable=True),
        sa.Column('payload', sa.Text(), nullable=False),
        sa.Column('created_at', UTCDateTime(), nullable=False),
        sa.Column('fanned_out_at', UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_notifications')),
        sa.UniqueConstraint('dedup_key', name=op.f('uq_notifications_dedup_key')),
        sa.UniqueConstraint('message_id', name=op.f('uq_notifications_message_id')),
    )
    op.create_index('ix_notifications_created_at', 'notifications', ['created_at'])
    op.create_index('ix_notifications_fanned_out_at', 'notifications', ['fanned_out_at'])
    op.create_index('ix_notifications_location_id_id', 'notifications', ['location_id', 'id'])
    op.create_table(
        'notification_deliveries',
        sa.Column('id', BigId, autoincrement=True, nullable=False),
        sa.Column('notification_id', BigId, nullable=False),
        sa.Column('destination', sa.String(length=16), nullable=False),
        sa.Column('host', sa.String(length=255), nullable=False),
        sa.Column('status', sa.String(length=10), nullable=False),
        sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
        sa.Column('next_attempt_at', UTCDateTime(), nullable=False),
        sa.Column('locked_until', UTCDateTime(), nullable=True),
        sa.Column('lease_token', sa.String(length=32), nullable=True),
        sa.Column('last_attempt_at', UTCDateTime(), nullable=True),
        sa.Column('last_status', sa.Integer(), nullable=True),
        sa.Column('last_error', sa.String(length=200), nullable=True),
        sa.Column('delivered_at', UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(['notification_id'], ['notifications.id'],
                                name=op.f('fk_notification_deliveries_notification_id_notifications')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_notification_deliveries')),
        sa.UniqueConstraint('notification_id', 'destination',
                            name=op.f('uq_notification_deliveries_notification_id_destination')),
    )
    op.create_index('ix_notification_deliveries_status_next_attempt_at',
                    'notification_deliveries', ['status', 'next_attempt_at'])
    op.create_table(
        'notification_attempts',
        sa.Column('id', BigId, autoincrement=True, nullable=False),
        sa.Column('delivery_id', BigId, nullable=False),
        sa.Column('at', UTCDateTime(), nullable=False),
        sa.Column('outcome', sa.String(length=10), nullable=False),
        sa.Column('http_status', sa.Integer(), nullable=True),
        sa.Column('error', sa.String(length=200), nullable=True),
        sa.Column('latency_ms', sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(['delivery_id'], ['notification_deliveries.id'],
                                name=op.f('fk_notification_attempts_delivery_id_notification_deliveries')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_notification_attempts')),
    )
    op.create_index('ix_notification_attempts_delivery_id', 'notification_attempts',
                    ['delivery_id'])
    op.create_table(
        'no_token_alerts',
        sa.Column('location_id', sa.String(length=64), nullable=False),
        sa.Column('waiting_since', UTCDateTime(), nullable=False),
        sa.Column('notified_at', UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('location_id', name=op.f('pk_no_token_alerts')),
    )


def downgrade() -> None:
    op.drop_table('no_token_alerts')
    op.drop_index('ix_notification_attempts_delivery_id', table_name='notification_attempts')
    op.drop_table('notification_attempts')
    op.drop_index('ix_notification_deliveries_status_next_attempt_at',
                  table_name='notification_deliveries')
    op.drop_table('notification_deliveries')
    op.drop_index('ix_notifications_location_id_id', table_name='notifications')
    op.drop_index('ix_notifications_fanned_out_at', table_name='notifications')
    op.drop_index('ix_notifications_created_at', table_name='notifications')
    op.drop_table('notifications')
