"""The `orfeas` command line: the agent client for everyone, local generation and key management for operators.

Subcommands come from one table (name -> where its parser and its runner live) and load on use, so
`orfeas --help` and `orfeas agent ...` need only the base (agent) install. Server-only commands in that
install exit with one line naming the missing extra instead of a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

DEFAULT_SCOPES = ["jobs:read", "jobs:write"]
SERVER_EXTRA_HINT = "needs the server extra: pip install 'orfeas-serve[server]'"
# Top-level import names of the `server` extra (pyproject.toml): a ModuleNotFoundError naming one of these
# means "light install", anything else is a real bug and propagates.
SERVER_MODULES = frozenset(
    {
        "PIL",
        "aiosqlite",
        "alembic",
        "asyncpg",
        "concurrent_log_handler",
        "cv2",
        "diffusers",
        "fast_simplification",
        "multipart",
        "numpy",
        "obstore",
        "onnxruntime",
        "pydantic",
        "python_multipart",
        "ray",
        "safetensors",
        "skimage",
        "sqlalchemy",
        "standardwebhooks",
        "starlette",
        "torch",
        "transformers",
        "trimesh",
        "yaml",
    }
)


@dataclass(frozen=True)
class Subcommand:
    """Where a subcommand's parser builder and runner live, as ``"module:attribute"`` (loaded on use).

    ``add_parser(subparsers)`` adds the subcommand; ``run(args) -> int`` returns the exit status.
    """

    add_parser: str
    run: str
    help: str  # shown by `orfeas --help` when the parser module itself cannot load (light install)
    server: bool = False  # needs the `server` extra


COMMANDS: dict[str, Subcommand] = {
    "generate": Subcommand(
        "deployments.generate_command:add_generate_parser",
        "serve_app.cli:run_generate",
        "turn images into meshes locally (no Ray)",
        server=True,
    ),
    "remove-background": Subcommand(
        "deployments.background_command:add_remove_background_parser",
        "serve_app.cli:run_remove_background",
        "cut photos out the way the model replica does (no Ray)",
        server=True,
    ),
    "keys": Subcommand("serve_app.cli:add_keys", "serve_app.cli:run_keys", "manage agent keys", server=True),
    "agent": Subcommand("serve_app.agent_cli:add_agent_parser", "serve_app.agent_cli:run_agent", "call the agent API"),
    "db": Subcommand(
        "serve_app.db_command:add_db_parser", "serve_app.db_command:run_db", "database migrations", server=True
    ),
    "mcp": Subcommand(
        "serve_app.mcp_server:add_mcp_parser", "serve_app.mcp_server:run_mcp", "serve the agent API as MCP tools"
    ),
}


def _load(target: str) -> Any:
    module, _, attribute = target.partition(":")
    return getattr(import_module(module), attribute)


def is_missing_server_dependency(exc: ImportError) -> bool:
    """True when ``exc`` says a module of the `server` extra is not installed."""
    name = exc.name or ""
    return isinstance(exc, ModuleNotFoundError) and name.split(".")[0] in SERVER_MODULES


def _missing_extra(command: str) -> int:
    print(f"orfeas {command}: {SERVER_EXTRA_HINT}", file=sys.stderr)
    return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orfeas", description="ORFEAS serve: images to 3D meshes for agents")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        try:
            _load(command.add_parser)(subparsers)
        except ImportError as exc:
            if not (command.server and is_missing_server_dependency(exc)):
                raise
            # a placeholder that accepts anything, so `orfeas NAME ...` reaches the one-line hint
            stub = subparsers.add_parser(name, help=f"{command.help} ({SERVER_EXTRA_HINT.removeprefix('needs ')})")
            stub.add_argument("rest", nargs=argparse.REMAINDER)
            stub.set_defaults(missing_extra=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = COMMANDS[args.command]
    if getattr(args, "missing_extra", False):
        return _missing_extra(args.command)
    try:
        run: Callable[[argparse.Namespace], int] = _load(command.run)
        return run(args)
    except ImportError as exc:
        if command.server and is_missing_server_dependency(exc):
            return _missing_extra(args.command)
        raise


# --- runners of the server-side commands (their heavy imports load here, on use) -------------------------------


def run_generate(args: argparse.Namespace) -> int:
    from deployments.generate_command import options_from_args, run_generate

    return _one_line_errors("generate", lambda: run_generate(options_from_args(args)))


def run_remove_background(args: argparse.Namespace) -> int:
    from deployments.background_command import options_from_args, run_remove_background

    return _one_line_errors("remove-background", lambda: run_remove_background(options_from_args(args)))


def add_keys(subparsers: Any) -> argparse.ArgumentParser:
    from serve_app.auth.cli import add_keys_parser

    keys: argparse.ArgumentParser = add_keys_parser(subparsers)
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
    return keys


def run_keys(args: argparse.Namespace) -> int:
    """Resolve the database and master key the way the service does, then run the keys subcommand."""
    import asyncio
    import os

    import serve_app.auth.keys  # noqa: F401  (registers the table; SQLAlchemy: fails first in a light install)
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


def _one_line_errors(command: str, run: Callable[[], object]) -> int:
    """Run a local command; its expected failures (CommandError) become one line on stderr and exit 1."""
    from deployments.generate_command import CommandError

    try:
        run()
    except CommandError as exc:
        print(f"orfeas {command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
