"""Alembic environment: runs on the connection :mod:`serve_app.schema` hands over.

The app's engines are async (aiosqlite, asyncpg). ``serve_app.schema`` opens the connection on the app's
own engine, takes the schema lock in it, and calls alembic's command API inside ``AsyncConnection.run_sync``;
this file only configures the context on that (synchronous facade of the) connection. There is no offline
(SQL script) mode and no URL of its own.
"""

from __future__ import annotations

from alembic import context

from serve_app.schema import VERSION_TABLE, load_metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reachable by running the alembic CLI by hand
    raise RuntimeError("run migrations through `orfeas db upgrade` (serve_app.schema), not the alembic CLI")

context.configure(
    connection=connection,
    target_metadata=load_metadata(),
    version_table=VERSION_TABLE,
    # SQLite cannot ALTER most things in place: batch mode recreates the table (op.batch_alter_table)
    render_as_batch=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
