"""Migrations: Alembic builds exactly the schema the code declares, and can go back."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from service.store.db import metadata
from service.store.engine import create_engine, current_revision, head_revision, upgrade


def test_migrations_match_the_metadata_and_downgrade(db_url):
    engine = create_engine(db_url)
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                metadata)
    assert diff == []
    upgrade_to_base(engine)
    assert current_revision(engine) is None
    upgrade(engine)  # and forward again
    assert current_revision(engine) == head_revision()
    engine.dispose()


def upgrade_to_base(engine):
    from alembic import command

    from service.store.engine import alembic_config

    command.downgrade(alembic_config(engine), "base")
