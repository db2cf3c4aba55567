"""Alembic environment: runs on the connection handed over by cds_service.migrations.upgrade."""

from alembic import context

from cds_service.store import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `lbp-redflags migrate` (cds_service.migrations.upgrade)")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=connection.dialect.name == "sqlite",
                  transactional_ddl=True)
with context.begin_transaction():
    context.run_migrations()
