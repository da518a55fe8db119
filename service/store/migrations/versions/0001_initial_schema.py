"""initial schema

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-25 23:33:42.413187
"""

import sqlalchemy as sa
from alembic import op

import service.store.db

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('delivery_log',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('at', service.store.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('document_row', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('location_id', sa.String(length=64), nullable=False),
    sa.Column('document_id', sa.String(length=64), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('outcome', sa.String(length=20), nullable=False),
    sa.Column('http_status', sa.Integer(), nullable=True),
    sa.Column('message', sa.String(length=500), nullable=True),
    sa.Column('trace_id', sa.String(length=64), nullable=True),
    sa.Column('latency_ms', sa.Integer(), nullable=True),
    sa.Column('views_covered', sa.Integer(), nullable=False),
    sa.Column('seq_to', sa.Integer(), nullable=False),
    sa.Column('request_id', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_delivery_log'))
    )
    with op.batch_alter_table('delivery_log', schema=None) as batch_op:
        batch_op.create_index('ix_delivery_log_at', ['at'], unique=False)
        batch_op.create_index('ix_delivery_log_document_row_seq_to', ['document_row', 'seq_to'], unique=False)
        batch_op.create_index('ix_delivery_log_location_id_id', ['location_id', 'id'], unique=False)

    op.create_table('documents',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('location_id', sa.String(length=64), nullable=False),
    sa.Column('document_id', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('views_seq', sa.Integer(), server_default='0', nullable=False),
    sa.Column('claimed_seq', sa.Integer(), server_default='0', nullable=False),
    sa.Column('sent_seq', sa.Integer(), server_default='0', nullable=False),
    sa.Column('failed_seq', sa.Integer(), server_default='0', nullable=False),
    sa.Column('due_at', service.store.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('locked_until', service.store.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('lease_token', sa.String(length=32), nullable=True),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('pending_since', service.store.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_attempt_at', service.store.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_sent_at', service.store.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('quiet_until', service.store.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_status', sa.Integer(), nullable=True),
    sa.Column('last_error', sa.String(length=500), nullable=True),
    sa.Column('dead_reason', sa.String(length=20), nullable=True),
    sa.Column('last_request_id', sa.String(length=64), nullable=True),
    sa.Column('updated_at', service.store.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_documents')),
    sa.UniqueConstraint('kind', 'location_id', 'document_id', name=op.f('uq_documents_kind_location_id_document_id'))
    )
    with op.batch_alter_table('documents', schema=None) as batch_op:
        batch_op.create_index('ix_documents_location_id_status', ['location_id', 'status'], unique=False)
        batch_op.create_index('ix_documents_status_due_at', ['status', 'due_at'], unique=False)

    op.create_table('locations',
    sa.Column('location_id', sa.String(length=64), nullable=False),
    sa.Column('token_kind', sa.String(length=10), nullable=False),
    sa.Column('access_token', sa.Text(), nullable=False),
    sa.Column('refresh_token', sa.Text(), nullable=True),
    sa.Column('expires_at', service.store.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('company_id', sa.String(length=64), nullable=True),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('generation', sa.Integer(), server_default='1', nullable=False),
    sa.Column('unauthorized_count', sa.Integer(), server_default='0', nullable=False),
    sa.Column('last_error', sa.String(length=500), nullable=True),
    sa.Column('created_at', service.store.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', service.store.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('location_id', name=op.f('pk_locations'))
    )
    op.create_table('events',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('event_key', sa.String(length=64), nullable=True),
    sa.Column('document_row', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('seq', sa.Integer(), nullable=True),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('location_id', sa.String(length=64), nullable=False),
    sa.Column('document_id', sa.String(length=64), nullable=False),
    sa.Column('viewed_at', service.store.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('received_at', service.store.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('source', sa.String(length=64), nullable=True),
    sa.Column('user_agent', sa.String(length=512), nullable=True),
    sa.Column('ip', sa.String(length=64), nullable=True),
    sa.Column('verdict', sa.String(length=20), server_default='human', nullable=False),
    sa.Column('forward', sa.Boolean(), server_default=sa.true(), nullable=False),
    sa.Column('request_id', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['document_row'], ['documents.id'], name=op.f('fk_events_document_row_documents')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_events')),
    sa.UniqueConstraint('event_key', name=op.f('uq_events_event_key'))
    )
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index('ix_events_document_row_seq', ['document_row', 'seq'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index('ix_events_document_row_seq')

    op.drop_table('events')
    op.drop_table('locations')
    with op.batch_alter_table('documents', schema=None) as batch_op:
        batch_op.drop_index('ix_documents_status_due_at')
        batch_op.drop_index('ix_documents_location_id_status')

    op.drop_table('documents')
    with op.batch_alter_table('delivery_log', schema=None) as batch_op:
        batch_op.drop_index('ix_delivery_log_location_id_id')
        batch_op.drop_index('ix_delivery_log_document_row_seq_to')
        batch_op.drop_index('ix_delivery_log_at')

    op.drop_table('delivery_log')
