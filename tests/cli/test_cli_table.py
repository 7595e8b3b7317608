"""The subcommand table: a missing server dependency becomes the one-line hint; any other ImportError is a bug
and propagates."""

from __future__ import annotations

import argparse

import pytest

from serve_app import cli


def _add_demo(subparsers: argparse._SubParsersAction) -> None:
    subparsers.add_parser("demo").add_argument("--flag")


def _add_needs_sqlalchemy(subparsers: argparse._SubParsersAction) -> None:
    raise ModuleNotFoundError("No module named 'sqlalchemy'", name="sqlalchemy")


def _run_needs_torch(args: argparse.Namespace) -> int:
    raise ModuleNotFoundError("No module named 'torch.nn'", name="torch.nn")


def _run_broken(args: argparse.Namespace) -> int:
    raise ModuleNotFoundError("No module named 'serve_app.nope'", name="serve_app.nope")


@pytest.fixture
def table(monkeypatch):
    commands = {"agent": cli.COMMANDS["agent"]}
    monkeypatch.setattr(cli, "COMMANDS", commands)
    return commands


def test_cli_server_command_without_its_dependency_prints_one_line_hint(table, capsys):
    table["demo"] = cli.Subcommand(f"{__name__}:_add_demo", f"{__name__}:_run_needs_torch", "demo", server=True)
    assert cli.main(["demo", "--flag", "x"]) == 1
    assert capsys.readouterr().err == "orfeas demo: needs the server extra: pip install 'orfeas-serve[server]'\n"


def test_cli_parser_module_without_server_dependency_becomes_a_placeholder(table, capsys):
    table["db"] = cli.Subcommand(f"{__name__}:_add_needs_sqlalchemy", f"{__name__}:_run_broken", "migrate", server=True)
    assert "migrate (the server extra: pip install 'orfeas-serve[server]')" in cli.build_parser().format_help()
    assert cli.main(["db", "upgrade", "--database-url", "sqlite://"]) == 1
    assert capsys.readouterr().err == "orfeas db: needs the server extra: pip install 'orfeas-serve[server]'\n"


def test_cli_other_import_errors_propagate(table):
    table["demo"] = cli.Subcommand(f"{__name__}:_add_demo", f"{__name__}:_run_broken", "demo", server=True)
    with pytest.raises(ModuleNotFoundError, match=r"serve_app\.nope"):
        cli.main(["demo"])


def test_cli_agent_command_never_turns_import_errors_into_the_hint(table):
    table["demo"] = cli.Subcommand(f"{__name__}:_add_demo", f"{__name__}:_run_needs_torch", "demo")
    with pytest.raises(ModuleNotFoundError):
        cli.main(["demo"])
