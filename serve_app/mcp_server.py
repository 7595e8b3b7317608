"""``orfeas mcp``: the agent API as an MCP server, over stdio or streamable HTTP.

    orfeas mcp --key-file agent.json                       # stdio: an MCP client starts it as a subprocess
    orfeas mcp --transport streamable-http --port 8765     # http://127.0.0.1:8765/mcp

Building the parser imports nothing beyond the standard library; the MCP SDK loads only when the command runs.
The tools live in :mod:`serve_app.mcp_tools`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

TRANSPORTS = ("stdio", "streamable-http")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def add_mcp_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``mcp`` to the main CLI's ``add_subparsers()`` object."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "mcp", help="serve the agent API as MCP tools (stdio or streamable HTTP)"
    )
    parser.add_argument(
        "--key-file", type=Path, help="JSON {key_id, secret, url} (default .orfeas/dev-agent.json, written by dev mode)"
    )
    parser.add_argument("--url", help="API base URL; default: the key file's url")
    parser.add_argument("--transport", choices=TRANSPORTS, default="stdio", help="default: stdio")
    parser.add_argument("--host", default="127.0.0.1", help="streamable-http: address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="streamable-http: port (default 8765; 0: any free)")
    return parser


def run_mcp(args: argparse.Namespace) -> int:
    """Serve until the client disconnects (stdio) or the process is interrupted (HTTP); the exit status."""
    from serve_app.client import DEFAULT_KEY_FILE, AgentClient

    try:
        # a tool call should answer within an MCP client's patience: a long Retry-After comes back as a
        # retryable tool error (queue_full, retryable after N s) for the agent to act on, not as a silent sleep
        client = AgentClient.from_key_file(
            args.key_file or DEFAULT_KEY_FILE, base_url=args.url, max_retries=2, max_retry_wait_s=10
        )
    except (OSError, ValueError) as exc:
        print(f"orfeas mcp: error: {exc}", file=sys.stderr)
        return 2

    import anyio

    from serve_app.mcp_tools import build_server, serve_streamable_http

    def ready(url: str) -> None:
        print(f"orfeas mcp: serving MCP (streamable HTTP) at {url} for {client.base_url}", file=sys.stderr, flush=True)
        if args.host not in LOOPBACK_HOSTS:
            # the transport has no authentication of its own: whoever reaches the port acts with this key
            print(
                f"orfeas mcp: warning: listening on {args.host}, not loopback: anyone who reaches it uses this key",
                file=sys.stderr,
                flush=True,
            )

    with client:
        server = build_server(client)
        try:
            if args.transport == "stdio":
                anyio.run(server.run_stdio_async)
            else:
                anyio.run(serve_streamable_http, server, args.host, args.port, ready)
        except OSError as exc:  # the port is taken, the host is not ours
            print(f"orfeas mcp: error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            pass
    return 0
