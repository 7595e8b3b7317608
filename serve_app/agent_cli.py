"""``orfeas agent submit|status|list|cancel|download``: try the service from a shell, as an agent would.

A thin layer over :class:`serve_app.client.AgentClient`: JSON results on stdout, one-line errors on
stderr with exit status 1. Like the SDK it needs neither Ray nor torch; building the parser imports only
argparse, so `orfeas --help` stays fast (the SDK and httpx load when a command runs).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deployments.contract import FRONT_VIEW, JOB_STATUSES, MESH_FORMATS, PRIORITIES, VIEW_NAMES
from deployments.terminal import StatusLine, short_id

if TYPE_CHECKING:
    from serve_app.client import AgentClient


def add_agent_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``agent`` with its subcommands to the main CLI's ``add_subparsers()`` object."""
    agent: argparse.ArgumentParser = subparsers.add_parser("agent", help="call the agent API with an agent key")
    # on each subcommand (not on `agent`), so they may follow the subcommand: `orfeas agent list --url ...`
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--key-file", type=Path, help="JSON {key_id, secret, url} (default .orfeas/dev-agent.json, written by dev mode)"
    )
    common.add_argument("--url", help="API base URL; default: the key file's url")
    commands = agent.add_subparsers(dest="agent_command", required=True)

    submit = commands.add_parser(
        "submit", parents=[common], help="submit one job per image, or one multiview job from --view images"
    )
    submit.add_argument("images", nargs="*", type=Path, metavar="IMAGE", help="PNG, JPEG or WebP files")
    submit.add_argument(
        "--view",
        dest="views",
        action="append",
        type=_view_argument,
        metavar="NAME=IMAGE",
        help=f"one view of a multiview job (repeat; names {', '.join(VIEW_NAMES)}; front required), "
        "instead of IMAGE files",
    )
    submit.add_argument("--seed", type=int, metavar="S", help="seed of every job (default: one drawn per job)")
    submit.add_argument("--steps", type=int, dest="num_inference_steps", metavar="N", help="denoising steps")
    submit.add_argument("--octree-resolution", type=int, metavar="R", help="mesh extraction grid resolution")
    submit.add_argument("--guidance-scale", type=float, metavar="G", help="classifier-free guidance scale")
    submit.add_argument("--priority", choices=PRIORITIES, default="normal")
    submit.add_argument(
        "--model", metavar="NAME", help="model to run on (capabilities list them; default: the service's)"
    )
    submit.add_argument("--wait", action="store_true", help="wait for the jobs and download their meshes")
    submit.add_argument("--out", type=Path, help="where --wait writes meshes (default: .); implies --wait")
    submit.add_argument("--format", choices=MESH_FORMATS, default="glb", help="mesh format to download (default glb)")
    submit.add_argument("--timeout", type=float, default=600.0, help="seconds --wait waits per job (default 600)")

    status = commands.add_parser("status", parents=[common], help="show a job")
    status.add_argument("job_id")
    listing = commands.add_parser("list", parents=[common], help="list your jobs, newest first")
    listing.add_argument("--status", choices=JOB_STATUSES)
    listing.add_argument("--limit", type=int, default=50, help="page size (default 50)")
    listing.add_argument("--cursor", help="next_cursor of the previous page")
    cancel = commands.add_parser("cancel", parents=[common], help="cancel a queued or running job")
    cancel.add_argument("job_id")
    download = commands.add_parser("download", parents=[common], help="download a finished job's mesh")
    download.add_argument("job_id")
    download.add_argument("--format", choices=MESH_FORMATS, default="glb")
    download.add_argument("--out", type=Path, help="file to write (default: <job_id>.<format>)")
    return agent


def _view_argument(value: str) -> tuple[str, Path]:
    """``front=cat.png`` -> ("front", Path("cat.png")); the server checks the name."""
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=IMAGE such as front=cat.png, got {value!r}")
    return name, Path(path)


def _views(pairs: list[tuple[str, Path]]) -> dict[str, Path]:
    views: dict[str, Path] = {}
    for name, path in pairs:
        if name in views:
            raise ValueError(f"--view {name} given twice; give each view once")
        views[name] = path
    return views


def _submit(client: AgentClient, args: argparse.Namespace) -> tuple[Any, int]:
    """Submit every image first (so they queue together), then wait for and download each in turn.

    With ``--view``: one multiview job from the named images; its mesh is named after the front view."""
    params = {name: getattr(args, name) for name in ("num_inference_steps", "octree_resolution", "guidance_scale")}
    params = {name: value for name, value in params.items() if value is not None}
    options: dict[str, Any] = {
        "seed": args.seed,
        "params": params or None,
        "priority": args.priority,
        "model": args.model,
    }
    results: list[dict[str, Any]]
    if args.views:
        if args.images:
            raise ValueError("give IMAGE files or --view NAME=IMAGE options, not both")
        views = _views(args.views)
        job = client.submit(views=views, **options)
        front = views.get(FRONT_VIEW, Path("views"))
        results = [{"image": str(front), "views": {name: str(path) for name, path in views.items()}, "job": job}]
    elif args.images:
        jobs = [client.submit(image, **options) for image in args.images]
        results = [{"image": str(image), "job": job} for image, job in zip(args.images, jobs, strict=True)]
    else:
        raise ValueError("give one or more IMAGE files, or --view front=IMAGE (and --view left=..., back, right)")
    if not (args.wait or args.out is not None):
        return results, 0
    out = args.out or Path(".")
    out.mkdir(parents=True, exist_ok=True)
    status = 0
    for result in results:
        # on a terminal, one line per job rewritten as it moves; piped, stderr stays quiet and stdout is JSON
        line = StatusLine(sys.stderr)
        on_progress = _show_progress(line) if line.enabled else None
        try:
            job = result["job"] = client.wait(result["job"]["job_id"], timeout=args.timeout, on_progress=on_progress)
        finally:
            line.finish()
        if job["status"] == "succeeded":
            path = out / f"{Path(result['image']).stem}-{job['job_id']}.{args.format}"
            client.download(job["job_id"], args.format, path=path)
            result["file"] = str(path)
        else:
            error = job["error"]
            reason = f": {error['code']}: {error['message']}" if error else ""
            print(f"orfeas agent: job {job['job_id']} {job['status']}{reason}", file=sys.stderr)
            status = 1
    return results, status


def _show_progress(line: StatusLine) -> Callable[[dict[str, Any]], None]:
    return lambda job: line.update(progress_text(job))


def progress_text(job: dict[str, Any]) -> str:
    """``job_ab12… running generating 10%``: what a person watching the terminal wants to see of a job."""
    parts = [short_id(job["job_id"]), job["status"]]
    if job.get("stage") and job["stage"] != job["status"]:
        parts.append(job["stage"])
    if job.get("progress") is not None:
        parts.append(f"{job['progress']}%")
    return " ".join(parts)


def _run(client: AgentClient, args: argparse.Namespace) -> tuple[Any, int]:
    command = args.agent_command
    if command == "submit":
        return _submit(client, args)
    if command == "status":
        return client.get(args.job_id), 0
    if command == "list":
        return client.list(status=args.status, limit=args.limit, cursor=args.cursor), 0
    if command == "cancel":
        return client.cancel(args.job_id), 0
    if command == "download":
        path = args.out or Path(f"{args.job_id}.{args.format}")
        data = client.download(args.job_id, args.format, path=path)
        return {"job_id": args.job_id, "format": args.format, "path": str(path), "bytes": len(data)}, 0
    raise ValueError(f"unknown agent command {command!r}")  # pragma: no cover - argparse rejects it first


def run_agent(args: argparse.Namespace) -> int:
    """Run one ``agent`` subcommand; returns the process exit status."""
    import httpx

    from serve_app.client import DEFAULT_KEY_FILE, AgentClient, ApiRequestError

    try:
        with AgentClient.from_key_file(args.key_file or DEFAULT_KEY_FILE, base_url=args.url) as client:
            result, status = _run(client, args)
    except ApiRequestError as exc:
        request = f" (request_id {exc.request_id})" if exc.request_id else ""
        print(f"orfeas agent: error: {exc}{request}", file=sys.stderr)
        return 1
    except (httpx.HTTPError, OSError, ValueError, TimeoutError) as exc:
        print(f"orfeas agent: error: {str(exc) or type(exc).__name__}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return status
