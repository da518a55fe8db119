"""Alembic environment: runs on the engine the app built (``engine.upgrade``)."""

from alembic import context

from service.store.db import metadata
from service.store.engine import create_engine

config = context.config
engine = config.attributes.get("engine")
if engine is None:  # plain `alembic` CLI use, e.g. `alembic revision --autogenerate`
    engine = create_engine(config.get_main_option("sqlalchemy.url"))

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    context.run_migrations()
