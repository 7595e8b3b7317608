"""The database schema's revision: upgrade it (Alembic), read it, and refuse to start on an old one.

Every process that opens the database goes through :func:`prepare_schema`: dev mode upgrades to the newest
revision at start (what ``create_all`` used to do), production mode refuses to start unless the database is
already there, and names the command that gets it there (``orfeas db upgrade``). The migrations live in
``serve_app/migrations`` and ship with the package; the Alembic config is built here, no ``alembic.ini``.

Alembic runs on the app's own async engine through ``AsyncConnection.run_sync``: the same driver and pragmas
as the service, no second (synchronous) driver to install, and the schema lock below is taken in the very
connection (on Postgres: the very transaction) that migrates.
"""

from __future__ import annotations

import asyncio
import fcntl
import importlib.util
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from sqlalchemy import Connection, MetaData, inspect, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from serve_app.db import Base

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version"

# What revision 0001 created: exactly the tables `create_all` made before migrations existed. A database
# holding all of them and no version table was deployed then; it is stamped at 0001, then upgraded.
INITIAL_REVISION = "0001"
INITIAL_TABLES = frozenset(
    {
        "agent_keys",
        "auth_failures",
        "auth_nonces",
        "job_batches",
        "job_idempotency_keys",
        "jobs",
        "stream_slots",
    }
)

# Any constant shared by every process of the app: the key of the Postgres advisory lock below.
_SCHEMA_LOCK_KEY = 0x0F3EA5


class SchemaError(RuntimeError):
    """The database's schema is not one this release can use (or make usable); the message says what to do."""


def load_metadata() -> MetaData:
    """``Base.metadata`` with every table of the app registered: imports each module that defines tables.

    A module that adds a table must be imported here, and get a revision (docs/operations.md, "Adding a
    revision"); tests/serve_app/test_migrations.py fails until both are done.
    """
    import serve_app.auth.keys
    import serve_app.auth.nonces
    import serve_app.auth.ratelimit
    import serve_app.jobs.models
    import serve_app.quota_store
    import serve_app.webhooks.models  # noqa: F401

    return Base.metadata


def alembic_config(connection: Connection | None = None) -> Config:
    """The Alembic config, built in code; ``env.py`` migrates ``connection``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # new revisions are named like 0001_initial.py: `orfeas db` never needs the file name, people do
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships revision 0001
        raise SchemaError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


@dataclass(frozen=True)
class SchemaState:
    """Where a database stands. ``revision`` is None without a version table (empty, or pre-migrations)."""

    revision: str | None
    head: str
    kind: Literal["versioned", "empty", "create_all", "unknown"]

    @property
    def at_head(self) -> bool:
        return self.revision == self.head

    def describe(self) -> str:
        if self.revision is not None:
            return f"at revision {self.revision}"
        return {
            "empty": "empty",
            "create_all": "from before migrations (no revision; upgrading stamps it at 0001)",
            "unknown": "holding only some of the app's tables and no revision",
            "versioned": "",  # unreachable: a versioned database has a revision
        }[self.kind]


async def schema_state(engine: AsyncEngine) -> SchemaState:
    async with engine.connect() as conn:
        return await conn.run_sync(_state)


async def upgrade_schema(engine: AsyncEngine) -> SchemaState:
    """Bring the database to the newest revision (idempotent; safe to run from several processes at once).

    1. take the schema lock, 2. stamp a pre-migrations (``create_all``) database at 0001, 3. upgrade to head,
    4. commit. The ingress and the job workers start together and each upgrades; without the lock two could
    both see a table missing and both create it. On Postgres the lock is a transaction-scoped advisory lock
    and the whole upgrade is one transaction (Postgres DDL is transactional); on SQLite (one host by nature)
    it is an exclusive ``flock`` on a file next to the database.
    """
    async with _sqlite_file_lock(engine), engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
        state = await conn.run_sync(_upgrade)
        await conn.commit()
    return state


async def require_head(engine: AsyncEngine) -> SchemaState:
    """The production start-up check: the database is at the newest revision, else :class:`SchemaError`."""
    state = await schema_state(engine)
    if not state.at_head:
        raise SchemaError(
            f"the job database is {state.describe()}, this release needs {state.head}: "
            f"run {upgrade_command(engine.url)}"
        )
    return state


async def prepare_schema(engine: AsyncEngine, mode: Literal["dev", "production"]) -> SchemaState:
    """What every process does before using the database: dev upgrades, production only checks."""
    return await (upgrade_schema(engine) if mode == "dev" else require_head(engine))


async def create_or_require_head(engine: AsyncEngine) -> SchemaState:
    """For operator commands other than ``orfeas db`` (``orfeas keys``): an empty database gets the schema (the
    first command run on a new one), any other must be at head. Migrating stays an explicit ``orfeas db upgrade``,
    never a side effect of creating a key against a production database."""
    if (await schema_state(engine)).kind == "empty":
        return await upgrade_schema(engine)
    return await require_head(engine)


def upgrade_command(url: URL) -> str:
    """The command that upgrades the database at ``url``, without its password."""
    shown = url.render_as_string(hide_password=True)
    hint = " (with the password in place of ***)" if url.password else ""
    return f"orfeas db upgrade --database-url '{shown}'{hint}"


def _state(conn: Connection) -> SchemaState:
    head = head_revision()
    revision = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()
    if revision is not None:
        known = {script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
        if revision not in known:
            raise SchemaError(
                f"the job database is at revision {revision}, which this release does not know (its newest is "
                f"{head}): it was upgraded by a newer release; run that release, or restore a backup"
            )
        return SchemaState(revision, head, "versioned")
    present = INITIAL_TABLES & set(inspect(conn).get_table_names())
    if not present:
        return SchemaState(None, head, "empty")
    return SchemaState(None, head, "create_all" if present == INITIAL_TABLES else "unknown")


def _upgrade(conn: Connection) -> SchemaState:
    state = _state(conn)
    config = alembic_config(conn)
    if state.kind == "unknown":
        present = sorted(INITIAL_TABLES & set(inspect(conn).get_table_names()))
        missing = sorted(INITIAL_TABLES - set(present))
        raise SchemaError(
            f"the job database has some of the app's tables ({', '.join(present)}) but not {', '.join(missing)}, "
            "and no revision: it was not made by this app's create_all or migrations; point the app at an empty "
            "database, or restore the full schema and run the upgrade again"
        )
    if state.kind == "create_all":
        command.stamp(config, INITIAL_REVISION)
    command.upgrade(config, "head")
    return SchemaState(state.head, state.head, "versioned")


async def new_revision(message: str) -> Path:
    """Write the next revision (``NNNN_<message>.py``) from the difference between head and the models.

    For developers adding a table or column: the scratch SQLite database at head is compared with
    :func:`load_metadata` (Alembic autogenerate). Read and edit what it writes: autogenerate cannot see
    renames, and a type of the app's own renders as its import path.
    """
    from serve_app.db import make_engine

    next_id = f"{int(head_revision()) + 1:04d}"
    with tempfile.TemporaryDirectory() as scratch:
        engine = make_engine(f"sqlite+aiosqlite:///{Path(scratch) / 'head.db'}")
        try:
            await upgrade_schema(engine)
            async with engine.connect() as conn:
                script = await conn.run_sync(
                    lambda sync: command.revision(
                        _formatting(alembic_config(sync)), message=message, autogenerate=True, rev_id=next_id
                    )
                )
        finally:
            await engine.dispose()
    assert isinstance(script, Script)  # one revision, never a list: there is one head
    return Path(script.path)


def _formatting(config: Config) -> Config:
    """Where ruff is installed (dev installs), new revisions come out formatted as the gates want them."""
    if importlib.util.find_spec("ruff") is not None:
        config.set_section_option("post_write_hooks", "hooks", "ruff_format")
        config.set_section_option("post_write_hooks", "ruff_format.type", "module")
        config.set_section_option("post_write_hooks", "ruff_format.module", "ruff")
        config.set_section_option("post_write_hooks", "ruff_format.options", "format REVISION_SCRIPT_FILENAME")
    return config


@asynccontextmanager
async def _sqlite_file_lock(engine: AsyncEngine) -> AsyncIterator[None]:
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    fd = os.open(f"{database}.schema-lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        # flock blocks: wait in a worker thread so the event loop (health checks) keeps running
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
