"""`orfeas db upgrade` and `orfeas db current`: the operator's side of the schema migrations.

The database is found the way `orfeas keys` and the service find it: ``--database-url``, else the SQLite
file in ``--data-dir``. Production deployments run ``orfeas db upgrade`` before starting a new release (the
service refuses to start on an old schema); dev mode upgrades by itself at start.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from serve_app.config import AppConfig


def add_db_parser(subparsers: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    db = subparsers.add_parser("db", help="the job database's schema: upgrade it, show its revision")
    commands = db.add_subparsers(dest="db_command", required=True)
    upgrade = commands.add_parser("upgrade", help="migrate the database to the newest revision (idempotent)")
    current = commands.add_parser(
        "current", help="print the database's revision and whether it is the newest (exit 1 when it is not)"
    )
    revision = commands.add_parser(
        "revision", help="(developers) write the next revision from the models' difference with head"
    )
    revision.add_argument("-m", "--message", required=True, help="what it changes, e.g. 'add webhook tables'")
    for command in (upgrade, current):
        command.add_argument("--data-dir", type=Path, default=Path(".orfeas"), help="the service's data directory")
        command.add_argument("--database-url", help="default: the SQLite file in the data directory")
    return db


def run_db(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run one ``db`` subcommand; returns the exit status (0 done / at head, 1 not at head, 2 error)."""
    from sqlalchemy.exc import SQLAlchemyError

    from serve_app.config import AppConfig
    from serve_app.schema import SchemaError

    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    if args.db_command == "revision":
        from serve_app.schema import new_revision

        print(asyncio.run(new_revision(args.message)), file=out)
        return 0
    config = AppConfig(mode="production", data_dir=args.data_dir, database_url=args.database_url)
    try:
        return asyncio.run(_run(args.db_command, config, out))
    except (SchemaError, SQLAlchemyError, OSError) as exc:
        # one line: a driver's message can span several, and never holds the URL's password
        message = " ".join(str(exc).split())
        print(f"orfeas db {args.db_command}: error: {message}", file=err)
        return 2


async def _run(command: str, config: AppConfig, out: TextIO) -> int:
    from sqlalchemy.engine import make_url

    from serve_app.db import is_sqlite, make_engine
    from serve_app.schema import SchemaState, head_revision, schema_state, upgrade_command, upgrade_schema

    url = config.resolved_database_url
    shown = make_url(url).render_as_string(hide_password=True)
    if command == "current" and is_sqlite(url) and not _sqlite_file(url).exists():
        # reading must not create the file: report it as the empty database it would be
        state = SchemaState(None, head_revision(), "empty")
    else:
        if is_sqlite(url):
            _sqlite_file(url).parent.mkdir(parents=True, exist_ok=True)
        engine = make_engine(url)
        try:
            state = await (upgrade_schema(engine) if command == "upgrade" else schema_state(engine))
        finally:
            await engine.dispose()
    if command == "upgrade":
        print(f"{shown}: at revision {state.revision} (head)", file=out)
        return 0
    if state.at_head:
        print(f"{state.revision} (head)", file=out)
        return 0
    print(
        f"{state.revision or 'none'} (not head: the database is {state.describe()}, head is {state.head}; "
        f"run {upgrade_command(make_url(url))})",
        file=out,
    )
    return 1


def _sqlite_file(url: str) -> Path:
    from sqlalchemy.engine import make_url

    return Path(make_url(url).database or "")
