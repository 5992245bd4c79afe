"""Alembic's environment for the cloud's schema: run by :func:`cloudserver.db.migrate` on the
connection it passes (``config.attributes["connection"]``), inside its transaction and lock."""

from __future__ import annotations

from alembic import context

from cloudserver.db import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    transactional_ddl=True,
)
with context.begin_transaction():
    context.run_migrations()
