"""The `orfeas` command line: local generation for engineers and key management for operators.

Subcommands import their heavy dependencies lazily, so `orfeas --help` needs neither Ray nor torch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

DEFAULT_SCOPES = ["jobs:read", "jobs:write"]


def build_parser() -> argparse.ArgumentParser:
    from deployments.background_command import add_remove_background_parser
    from deployments.generate_command import add_generate_parser
    from serve_app.agent_cli import add_agent_parser
    from serve_app.auth.cli import add_keys_parser
    from serve_app.db_command import add_db_parser

    parser = argparse.ArgumentParser(prog="orfeas", description="ORFEAS serve: images to 3D meshes for agents")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_generate_parser(subparsers)
    add_remove_background_parser(subparsers)
    keys = add_keys_parser(subparsers)
    # where the keys live: the same resolution as the service, on every keys subcommand
    for action in keys._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                command.add_argument(
                    "--data-dir", type=Path, default=Path(".orfeas"), help="the service's data directory"
                )
                command.add_argument("--database-url", help="default: the SQLite file in the data directory")
                command.add_argument(
                    "--master-key-file",
                    type=Path,
                    help="default: $ORFEAS_MASTER_KEY, else <data-dir>/master.key (the dev-mode key)",
                )
    add_agent_parser(subparsers)
    add_db_parser(subparsers)
    return parser


def run_keys(args: argparse.Namespace) -> int:
    """Resolve the database and master key the way the service does, then run the keys subcommand."""
    import asyncio
    import os

    from serve_app.auth.cli import run_keys_command
    from serve_app.auth.crypto import MasterKeyError, load_master_key
    from serve_app.auth.settings import AuthSettings
    from serve_app.config import AppConfig

    config = AppConfig(mode="production", data_dir=args.data_dir, database_url=args.database_url)
    key_file = args.master_key_file
    if key_file is None and not os.environ.get(AuthSettings().master_key_env) and config.dev_master_key_file.exists():
        key_file = config.dev_master_key_file
    try:
        master_key = load_master_key(AuthSettings(master_key_file=key_file))
    except MasterKeyError as exc:
        print(f"orfeas keys: error: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "keys_command", None) == "create" and not args.scopes:
        args.scopes = list(DEFAULT_SCOPES)

    config.data_dir.mkdir(parents=True, exist_ok=True)
    return asyncio.run(run_keys_command(args, database_url=config.resolved_database_url, master_key=master_key))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "generate":
        from deployments.generate_command import options_from_args, run_generate

        return _one_line_errors("generate", lambda: run_generate(options_from_args(args)))
    if args.command == "remove-background":
        from deployments.background_command import options_from_args as cut_out_options
        from deployments.background_command import run_remove_background

        return _one_line_errors("remove-background", lambda: run_remove_background(cut_out_options(args)))
    if args.command == "keys":
        return run_keys(args)
    if args.command == "db":
        from serve_app.db_command import run_db

        return run_db(args)
    if args.command == "agent":
        from serve_app.agent_cli import run_agent

        return run_agent(args)
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover - argparse rejects it first
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


def _one_line_errors(command: str, run: Callable[[], object]) -> int:
    """Run a local command; its expected failures (CommandError) become one line on stderr and exit 1."""
    from deployments.generate_command import CommandError

    try:
        run()
    except CommandError as exc:
        print(f"orfeas {command}: error: {exc}", file=sys.stderr)
        return 1
    return 0
