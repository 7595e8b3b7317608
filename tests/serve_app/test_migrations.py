"""Alembic migrations on real SQLite and Postgres: upgrade, stamp of a create_all database, start-up check, CLI."""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

import serve_app
from serve_app.cli import main
from serve_app.config import AppConfig
from serve_app.db import Base, make_engine
from serve_app.schema import (
    INITIAL_REVISION,
    INITIAL_TABLES,
    MIGRATIONS_DIR,
    VERSION_TABLE,
    SchemaError,
    alembic_config,
    head_revision,
    load_metadata,
    new_revision,
    prepare_schema,
    require_head,
    schema_state,
    upgrade_command,
    upgrade_schema,
)
from serve_app.storage import Storage


async def _tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))


async def _differences(engine: AsyncEngine) -> list[object]:
    def compare(conn: Connection) -> list[object]:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "version_table": VERSION_TABLE})
        return list(compare_metadata(context, load_metadata()))

    async with engine.connect() as conn:
        return await conn.run_sync(compare)


async def _create_all_of_revision_0001(engine: AsyncEngine) -> None:
    """What a release before migrations made: the tables revision 0001 holds (as written out there, not as the
    models are now: later revisions add columns to them), and no version table."""
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync: command.upgrade(alembic_config(sync), INITIAL_REVISION))
        await conn.execute(text(f"DROP TABLE {VERSION_TABLE}"))
        await conn.execute(
            text("INSERT INTO auth_failures VALUES ('ip:192.0.2.1', 1.0, 3, 0, 0.0)")
        )  # data that must survive


@pytest.fixture
async def engine(db_url: str) -> AsyncEngine:
    engine = make_engine(db_url)
    yield engine  # type: ignore[misc]
    await engine.dispose()


# --- upgrade ----------------------------------------------------------------------------------------------------


async def test_upgrade_schema_from_empty_reaches_head_with_every_table(engine: AsyncEngine) -> None:
    assert (await schema_state(engine)).kind == "empty"

    state = await upgrade_schema(engine)

    assert (state.revision, state.at_head) == (head_revision(), True)
    assert (await schema_state(engine)).revision == head_revision()
    assert await _tables(engine) == set(load_metadata().tables) | {VERSION_TABLE}


async def test_upgrade_schema_twice_changes_nothing_and_keeps_rows(engine: AsyncEngine) -> None:
    await upgrade_schema(engine)
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO auth_failures VALUES ('ip:192.0.2.7', 1.0, 1, 0, 0.0)"))

    state = await upgrade_schema(engine)

    assert state.revision == head_revision()
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT subject FROM auth_failures"))).scalars().all() == ["ip:192.0.2.7"]
        assert (await conn.execute(text(f"SELECT count(*) FROM {VERSION_TABLE}"))).scalar_one() == 1


async def test_head_schema_matches_the_models(engine: AsyncEngine) -> None:
    """A table or column added to the models without a revision fails here."""
    await upgrade_schema(engine)
    assert await _differences(engine) == []


def test_load_metadata_registers_every_table_of_the_package() -> None:
    """Every module of serve_app that defines a table is imported by load_metadata (which env.py uses)."""
    registered = set(load_metadata().tables)
    for module in pkgutil.walk_packages(serve_app.__path__, prefix="serve_app."):
        if not module.name.startswith("serve_app.migrations"):
            importlib.import_module(module.name)
    assert set(Base.metadata.tables) == registered


def test_revision_0001_holds_exactly_the_create_all_tables() -> None:
    """INITIAL_TABLES (what detects a pre-migrations database) is what revision 0001 creates."""
    source = (MIGRATIONS_DIR / "versions" / "0001_initial.py").read_text()
    created = {line.split('"')[1] for line in source.split("op.create_table(\n")[1:]}
    assert created == INITIAL_TABLES


# --- a database from before migrations -------------------------------------------------------------------------


async def test_upgrade_schema_stamps_a_create_all_database_and_keeps_its_rows(engine: AsyncEngine) -> None:
    await _create_all_of_revision_0001(engine)
    assert (await schema_state(engine)).kind == "create_all"

    state = await upgrade_schema(engine)

    assert state.revision == head_revision()
    assert await _differences(engine) == []
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT subject FROM auth_failures"))).scalars().all() == ["ip:192.0.2.1"]


async def test_upgrade_schema_refuses_a_database_with_only_some_tables(engine: AsyncEngine) -> None:
    metadata = load_metadata()
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync: metadata.create_all(sync, tables=[metadata.tables["jobs"]]))

    with pytest.raises(SchemaError) as caught:
        await upgrade_schema(engine)

    assert "has some of the app's tables (jobs) but not agent_keys" in str(caught.value)
    assert VERSION_TABLE not in await _tables(engine)


async def test_schema_state_refuses_a_revision_this_release_does_not_know(engine: AsyncEngine) -> None:
    await upgrade_schema(engine)
    async with engine.begin() as conn:
        await conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '9999'"))

    with pytest.raises(SchemaError, match="at revision 9999, which this release does not know"):
        await prepare_schema(engine, "dev")


# --- start-up --------------------------------------------------------------------------------------------------


async def test_production_start_refuses_an_empty_database_with_the_command(db_url: str, tmp_path: Path) -> None:
    config = AppConfig(mode="production", data_dir=tmp_path / "data", database_url=db_url)

    with pytest.raises(SchemaError) as caught:
        await Storage.open(config)

    assert str(caught.value) == (
        f"the job database is empty, this release needs {head_revision()}: "
        f"run orfeas db upgrade --database-url '{db_url}'"
    )


async def test_production_start_refuses_a_create_all_database(engine: AsyncEngine) -> None:
    await _create_all_of_revision_0001(engine)

    with pytest.raises(SchemaError, match=r"from before migrations \(no revision; upgrading stamps it at 0001\)"):
        await require_head(engine)
    assert VERSION_TABLE not in await _tables(engine)  # production never changes the schema


async def test_production_start_opens_a_database_at_head(db_url: str, tmp_path: Path) -> None:
    engine = make_engine(db_url)
    await upgrade_schema(engine)
    await engine.dispose()

    storage = await Storage.open(AppConfig(mode="production", data_dir=tmp_path / "data", database_url=db_url))
    try:
        assert await storage.ready()
    finally:
        await storage.close()


async def test_dev_start_upgrades_a_fresh_database(tmp_path: Path) -> None:
    config = AppConfig(mode="dev", data_dir=tmp_path / "data")
    storage = await Storage.open(config)
    try:
        assert (await schema_state(storage.engine)).revision == head_revision()
    finally:
        await storage.close()


def test_upgrade_command_never_shows_the_password() -> None:
    url = make_url("postgresql+asyncpg://orfeas:hunter2@db.internal:5432/orfeas")
    assert upgrade_command(url) == (
        "orfeas db upgrade --database-url 'postgresql+asyncpg://orfeas:***@db.internal:5432/orfeas' "
        "(with the password in place of ***)"
    )


# --- orfeas db ---------------------------------------------------------------------------------------------------


def test_orfeas_db_current_then_upgrade_then_current(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    head = head_revision()

    assert main(["db", "current", "--database-url", db_url]) == 1
    assert capsys.readouterr().out == (
        f"none (not head: the database is empty, head is {head}; run orfeas db upgrade --database-url '{db_url}')\n"
    )

    assert main(["db", "upgrade", "--database-url", db_url]) == 0
    assert capsys.readouterr().out == f"{db_url}: at revision {head} (head)\n"
    assert main(["db", "upgrade", "--database-url", db_url]) == 0  # idempotent
    capsys.readouterr()

    assert main(["db", "current", "--database-url", db_url]) == 0
    assert capsys.readouterr().out == f"{head} (head)\n"


def test_orfeas_db_upgrade_stamps_a_create_all_database(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    async def create_all() -> None:
        engine = make_engine(db_url)
        await _create_all_of_revision_0001(engine)
        await engine.dispose()

    asyncio.run(create_all())

    assert main(["db", "current", "--database-url", db_url]) == 1
    assert "from before migrations" in capsys.readouterr().out
    assert main(["db", "upgrade", "--database-url", db_url]) == 0
    assert main(["db", "current", "--database-url", db_url]) == 0
    assert capsys.readouterr().out.endswith(f"{head_revision()} (head)\n")


def test_orfeas_db_uses_the_data_directory_by_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = tmp_path / "data"

    assert main(["db", "current", "--data-dir", str(data_dir)]) == 1
    assert not data_dir.exists()  # reading never creates the database
    assert main(["db", "upgrade", "--data-dir", str(data_dir)]) == 0

    assert (data_dir / "orfeas.db").is_file()
    expected = f"sqlite+aiosqlite:///{data_dir / 'orfeas.db'}: at revision {head_revision()} (head)\n"
    assert capsys.readouterr().out.endswith(expected)


def test_orfeas_db_reports_an_unreachable_database_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    # port 1 on loopback: refused at once; the password must not reach the output
    assert main(["db", "current", "--database-url", "postgresql+asyncpg://u:hunter2@127.0.0.1:1/x"]) == 2

    captured = capsys.readouterr()
    assert captured.err.startswith("orfeas db current: error: ") and captured.err.count("\n") == 1
    assert "hunter2" not in captured.err + captured.out


async def test_new_revision_writes_the_next_revision_from_the_models() -> None:
    from sqlalchemy import Column, String, Table

    table = Table("migration_probe", Base.metadata, Column("id", String(40), primary_key=True))
    path: Path | None = None
    try:
        path = await new_revision("add migration probe")
        source = path.read_text()
    finally:
        Base.metadata.remove(table)
        if path is not None:
            path.unlink()

    expected = f"{int(head_revision()) + 1:04d}"
    assert path.name == f"{expected}_add_migration_probe.py"
    assert f'revision = "{expected}"' in source and f'down_revision = "{head_revision()}"' in source
    assert 'op.create_table(\n        "migration_probe"' in source


# --- orfeas keys: creates the schema on an empty database, never migrates one -----------------------------------


async def _keys_list(url: str) -> tuple[int, str]:
    import argparse
    import io
    import os

    from serve_app.auth.cli import add_keys_parser, run_keys_command
    from serve_app.auth.secret import Secret

    parser = argparse.ArgumentParser(prog="orfeas")
    add_keys_parser(parser.add_subparsers(dest="command", required=True))
    out, err = io.StringIO(), io.StringIO()
    args = parser.parse_args(["keys", "list"])
    status = await run_keys_command(args, database_url=url, master_key=Secret(os.urandom(32)), out=out, err=err)
    return status, err.getvalue()


async def test_keys_command_creates_the_schema_on_an_empty_database(db_url: str, engine: AsyncEngine) -> None:
    assert await _keys_list(db_url) == (0, "")
    assert (await schema_state(engine)).revision == head_revision()


async def test_keys_command_refuses_to_migrate_a_create_all_database(db_url: str, engine: AsyncEngine) -> None:
    await _create_all_of_revision_0001(engine)

    status, err = await _keys_list(db_url)

    assert status == 2 and "run orfeas db upgrade --database-url" in err
    assert (await schema_state(engine)).kind == "create_all"
