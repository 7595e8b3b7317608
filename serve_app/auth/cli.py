"""``orfeas keys create|list|revoke|rotate``: parser and async handlers, wired into the main CLI.

The main CLI resolves the database URL and the master key (``crypto.load_master_key``) and calls
:func:`run_keys_command`. Output is JSON on stdout; errors are JSON on stderr with exit status 2.
Building the parser imports only argparse, so ``orfeas --help`` stays fast; the stores load on use.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from serve_app.auth.keys import KeyMaterial
    from serve_app.auth.secret import Secret


def add_keys_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``keys`` with its subcommands to the main CLI's ``add_subparsers()`` object."""
    keys: argparse.ArgumentParser = subparsers.add_parser("keys", help="manage agent API keys")
    commands = keys.add_subparsers(dest="keys_command", required=True)

    create = commands.add_parser("create", help="create a key; prints its secret once")
    create.add_argument("--agent", required=True, help="agent name, e.g. render-bot")
    create.add_argument(
        "--scopes", nargs="+", action="extend", default=[], metavar="SCOPE", help="e.g. jobs:read jobs:write"
    )
    create.add_argument(
        "--cidr", nargs="+", action="extend", default=[], metavar="CIDR", help="allowed client networks; none = any"
    )
    create.add_argument(
        "--expires-days", type=float, default=None, metavar="N", help="expire after N days; default never"
    )
    create.add_argument("--env", default="live", help="environment in the key id: ak_<env>_<random> (default live)")

    listing = commands.add_parser("list", help="list keys (never secrets)")
    listing.add_argument("--agent", default=None, help="only this agent's keys")

    revoke = commands.add_parser("revoke", help="revoke a key now")
    revoke.add_argument("key_id")

    rotate = commands.add_parser("rotate", help="new key with the scopes and CIDRs of the agent's newest key")
    rotate.add_argument("--agent", required=True)
    rotate.add_argument("--expires-days", type=float, default=None, metavar="N", help="expiry of the new key")
    rotate.add_argument(
        "--grace-days",
        type=float,
        default=7.0,
        metavar="D",
        help="the old key stops working after D days (default 7); a later existing expiry is brought forward",
    )
    rotate.add_argument("--env", default="live", help="environment in the new key id (default live)")
    return keys


def _days(value: float | None) -> dt.timedelta | None:
    return None if value is None else dt.timedelta(days=value)


def _created(material: KeyMaterial, now: dt.datetime) -> dict[str, Any]:
    return {
        **material.info.to_json(now),
        "secret": material.secret_b64(),
        "note": "Store this secret now: it is shown only once. Agents use it with AgentSigner(key_id, secret).",
    }


async def run_keys_command(
    args: argparse.Namespace,
    *,
    database_url: str,
    master_key: Secret,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run one ``keys`` subcommand against ``database_url``; returns the process exit status."""
    from serve_app.auth.keys import KeyStore, KeyStoreError
    from serve_app.db import make_engine
    from serve_app.schema import SchemaError, create_or_require_head

    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    engine = make_engine(database_url)
    try:
        await create_or_require_head(engine)
        store = KeyStore(engine, master_key, env=getattr(args, "env", "live"))
        now = dt.datetime.fromtimestamp(time.time(), dt.timezone.utc)
        result: Any
        if args.keys_command == "create":
            material = await store.create(
                args.agent, scopes=args.scopes, cidrs=args.cidr, expires_in=_days(args.expires_days)
            )
            result = _created(material, now)
        elif args.keys_command == "list":
            result = [info.to_json(now) for info in await store.list(args.agent)]
        elif args.keys_command == "revoke":
            result = (await store.revoke(args.key_id)).to_json(now)
        elif args.keys_command == "rotate":
            material = await store.rotate(
                args.agent, expires_in=_days(args.expires_days), old_key_grace=_days(args.grace_days)
            )
            result = _created(material, now)
        else:
            raise ValueError(f"unknown keys command {args.keys_command!r}")
    except (KeyStoreError, SchemaError) as exc:
        print(json.dumps({"error": str(exc)}), file=err)
        return 2
    finally:
        await engine.dispose()
    print(json.dumps(result, indent=2), file=out)
    return 0
