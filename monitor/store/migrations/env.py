"""Alembic's entry point: run the revisions on the connection the caller configured.

:func:`monitor.store.migrate.alembic_config` puts an open connection, inside its transaction,
in ``config.attributes["connection"]``; the revisions run in that transaction (Alembic adds
none of its own), so an upgrade commits or rolls back as one.
"""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=context.config.attributes.get("target_metadata"),
    # SQLite alters a column only by copying its table: revisions use batch_alter_table there.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
