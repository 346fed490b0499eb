"""Alembic environment: runs on the connection handed over by ``postroom.schema.upgrade``."""

from __future__ import annotations

from alembic import context

from postroom.db import Base
from postroom.schema import VERSION_TABLE, load_models

load_models()
connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    render_as_batch=True,  # SQLite alters tables by copying them
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
