"""The `orfeas` command line: local generation for engineers and key management for operators.

Subcommands import their heavy dependencies lazily, so `orfeas --help` needs neither Ray nor torch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    from deployments.generate_command import add_generate_parser

    parser = argparse.ArgumentParser(prog="orfeas", description="ORFEAS serve: images to 3D meshes for agents")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_generate_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "generate":
        from deployments.generate_command import CommandError, options_from_args, run_generate

        try:
            run_generate(options_from_args(args))
        except CommandError as exc:
            print(f"orfeas generate: error: {exc}", file=sys.stderr)
            return 1
        return 0
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover - argparse rejects it first
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
