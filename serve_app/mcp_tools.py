"""The MCP tool surface: five tools over :class:`~serve_app.client.AgentClient`, served by the official SDK.

Agent side like the SDK it wraps: it imports the ``mcp`` SDK (with its pydantic and anyio: typed tools, threads),
httpx, the standard library and ``serve_app.client`` -- never torch, Ray, SQLAlchemy or Starlette
(the SDK's HTTP transport brings its own Starlette and uvicorn).

Every tool returns a typed model, so clients get both ``structuredContent`` and an ``outputSchema``. Failures
the agent can act on -- an API error, an unreachable API, bad arguments, an unwritable path -- raise
:class:`ToolError`, which the SDK turns into a result with ``isError`` whose text starts with the API's code:
``job_not_found: no job ...``. The tools call the synchronous client; the SDK runs each in a worker thread, and
``get_job`` (async, so it can send progress notifications while it waits) hands its requests to threads itself.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import anyio.to_thread
import httpx
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field

from deployments.contract import (
    MAX_SEED,
    TERMINAL_STATUSES,
    JobStatus,
    MeshFormat,
    Priority,
    RemoveBackground,
    ViewName,
)
from serve_app.client import AgentClient, ApiRequestError

MAX_TOOL_WAIT_S = 60.0
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
_DATA_URL = re.compile(r"^data:[^,]*;base64,", re.IGNORECASE)

INSTRUCTIONS = """\
ORFEAS turns one image of an object (or, for a multiview model, its front, left, back and right views) into a 3D
mesh. Typical flow: generate_3d_shape (returns a queued job
at once) -> get_job with wait_s (repeat until status is succeeded, failed, cancelled or expired) ->
download_mesh to a local path. Jobs take from seconds to minutes. Errors start with the API's error code."""


# ---- what the tools return --------------------------------------------------------------------------------


class JobError(BaseModel):
    code: str
    message: str | None = None
    retryable: bool = False


class Job(BaseModel):
    """A job as the API reports it (fields the API adds later are passed through)."""

    model_config = ConfigDict(extra="allow")

    job_id: str
    status: JobStatus
    stage: str | None = Field(None, description="what the job is doing now, e.g. queued, denoising, done")
    progress: float | None = Field(None, description="percent done, 0-100")
    priority: Priority | None = None
    model: str | None = None
    seed: int | None = None
    params: dict[str, Any] | None = None
    views: list[ViewName] | None = Field(None, description="the views the job was given, front first")
    batch_id: str | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    deadline_at: str | None = None
    attempts: int | None = None
    timings: dict[str, Any] | None = None
    mesh: dict[str, Any] | None = Field(None, description="statistics of the finished mesh (faces, vertices, ...)")
    error: JobError | None = Field(None, description="why the job failed")
    status_url: str | None = None
    events_url: str | None = None
    result_expires_at: str | None = None
    result_urls: dict[str, str] | None = None


class ViewSource(BaseModel):
    """One view's image: exactly one of a path or base64, as generate_3d_shape's image_path / image_base64."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(None, description="a PNG, JPEG or WebP file readable by this MCP server")
    base64: str | None = Field(None, description="the image as standard base64 (a data: URL works too)")


class JobPage(BaseModel):
    jobs: list[Job]
    next_cursor: str | None = Field(None, description="pass as cursor for the next page; null on the last page")


class DownloadedMesh(BaseModel):
    path: str = Field(description="absolute path of the written file")
    bytes: int = Field(description="size of the file in bytes")
    format: MeshFormat


# ---- the tools ----------------------------------------------------------------------------------------------


@contextmanager
def _api_errors(base_url: str) -> Iterator[None]:
    """API and transport failures -> ToolError whose text starts with the API's code."""
    try:
        yield
    except ApiRequestError as exc:
        details = [f"HTTP {exc.status}"]
        if exc.retryable:
            details.append("retryable" if exc.retry_after is None else f"retryable after {exc.retry_after:g} s")
        if exc.request_id:
            details.append(f"request_id {exc.request_id}")
        raise ToolError(f"{exc.code}: {exc.message} ({', '.join(details)})") from None
    except httpx.TransportError as exc:
        reason = str(exc) or type(exc).__name__
        raise ToolError(f"api_unreachable: cannot reach the ORFEAS API at {base_url}: {reason}") from None


class OrfeasTools:
    """The tool functions, bound to one signed client; their signatures are the tools' input schemas."""

    def __init__(self, client: AgentClient) -> None:
        self._client = client
        self._server_max_wait: float | None = None

    def generate_3d_shape(
        self,
        image_path: Annotated[
            str | None, Field(description="a PNG, JPEG or WebP file readable by this MCP server")
        ] = None,
        image_base64: Annotated[
            str | None, Field(description="the image as standard base64 (a data: URL works too)")
        ] = None,
        views: Annotated[
            dict[ViewName, ViewSource] | None,
            Field(
                description="instead of an image, for multiview models: {front: {path|base64}, left: ..., back: ..., "
                "right: ...}, front required"
            ),
        ] = None,
        seed: Annotated[int | None, Field(ge=0, le=MAX_SEED, description="default: one drawn by the service")] = None,
        params: Annotated[
            dict[str, Any] | None,
            Field(description="generation params: num_inference_steps, guidance_scale, octree_resolution, ..."),
        ] = None,
        remove_background: Annotated[
            RemoveBackground | None, Field(description="auto: only when the image has no alpha channel")
        ] = None,
        max_faces: Annotated[
            int | None, Field(ge=0, description="reduce the mesh to at most this many faces; 0: no reduction")
        ] = None,
        priority: Priority = "normal",
        model: Annotated[
            str | None,
            Field(description="the model: a models[].name of GET /api/agent/capabilities; default: the service's"),
        ] = None,
    ) -> Job:
        """Queue a job that turns one image of an object into a 3D mesh; returns the queued job at once.

        Give exactly one of image_path or image_base64, or views (a multiview model's front and other views).
        Follow up with get_job (wait_s) and download_mesh.
        """
        image: bytes | None = None
        view_images: dict[str, bytes] | None = None
        if views is not None:
            if image_path is not None or image_base64 is not None:
                raise ToolError("invalid_arguments: give views or an image (image_path, image_base64), not both")
            view_images = {
                name: _image_bytes(source.path, source.base64, f"views.{name}.") for name, source in views.items()
            }
        else:
            image = _image_bytes(image_path, image_base64)
        job_params = dict(params or {})
        if remove_background is not None:
            job_params["remove_background"] = remove_background
        if max_faces is not None:
            job_params["max_faces"] = max_faces
        with _api_errors(self._client.base_url):
            # a fresh idempotency key per call lets the client retry a full queue or a lost connection safely
            job = self._client.submit(
                image,
                views=view_images,
                seed=seed,
                params=job_params or None,
                priority=priority,
                idempotency_key=str(uuid.uuid4()),
                model=model,
            )
        return Job.model_validate(job)

    async def get_job(
        self,
        job_id: str,
        wait_s: Annotated[
            float,
            Field(ge=0, le=MAX_TOOL_WAIT_S, description="wait up to this many seconds for the job to finish"),
        ] = 0,
        ctx: Context | None = None,
    ) -> Job:
        """The job's status, stage and progress; with wait_s, returns as soon as it finishes or wait_s passes.

        While waiting, each answer is also sent as an MCP progress notification (percent, stage).
        """
        with _api_errors(self._client.base_url):
            if wait_s <= 0:
                return Job.model_validate(await anyio.to_thread.run_sync(self._client.get, job_id))
            # the API holds one request at most max_wait_s: loop until the job ends or our deadline passes
            deadline = time.monotonic() + wait_s
            step = await anyio.to_thread.run_sync(self._max_wait)
            while True:
                remaining = max(0.0, deadline - time.monotonic())
                wait = None if step <= 0 else min(step, remaining)
                job = await anyio.to_thread.run_sync(functools.partial(self._client.get, job_id, wait=wait))
                if ctx is not None:
                    await ctx.report_progress(float(job.get("progress") or 0), 100, job.get("stage"))
                remaining = deadline - time.monotonic()
                if job["status"] in TERMINAL_STATUSES or remaining <= 0:
                    return Job.model_validate(job)
                if step <= 0:  # the server does not hold requests: pace the polling ourselves
                    await anyio.sleep(min(1.0, remaining))

    def download_mesh(
        self,
        job_id: str,
        path: Annotated[
            str, Field(description="file to write (parents are created), or a directory: <job_id>.<format> in it")
        ],
        format: MeshFormat = "glb",
    ) -> DownloadedMesh:
        """Write the mesh of a succeeded job to a local file, in glb, obj, stl or ply."""
        target = Path(path).expanduser()
        if target.is_dir():
            target = target / f"{job_id}.{format}"
        with _api_errors(self._client.base_url):
            data = self._client.download(job_id, format)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        except OSError as exc:
            raise ToolError(f"write_failed: cannot write {target}: {exc.strerror or exc}") from None
        return DownloadedMesh(path=str(target.resolve()), bytes=len(data), format=format)

    def list_jobs(
        self,
        status: JobStatus | None = None,
        limit: Annotated[int, Field(ge=1, le=200, description="jobs per page (the server may cap it)")] = 20,
        cursor: Annotated[str | None, Field(description="next_cursor of the previous page")] = None,
    ) -> JobPage:
        """This agent's jobs, newest first, one page at a time."""
        with _api_errors(self._client.base_url):
            return JobPage.model_validate(self._client.list(status=status, limit=limit, cursor=cursor))

    def cancel_job(self, job_id: str) -> Job:
        """Cancel a queued or running job; a job that already finished answers job_finished."""
        with _api_errors(self._client.base_url):
            return Job.model_validate(self._client.cancel(job_id))

    def _max_wait(self) -> float:
        if self._server_max_wait is None:
            self._server_max_wait = float(self._client.capabilities()["limits"]["max_wait_s"])
        return self._server_max_wait


def _image_bytes(image_path: str | None, image_base64: str | None, where: str = "") -> bytes:
    """The image of the tool call (``where`` ''), or of one view (``where`` 'views.left.', its keys then named
    ``path`` and ``base64``)."""
    path_arg, base64_arg = ("image_path", "image_base64") if not where else (f"{where}path", f"{where}base64")
    if image_base64 is not None and image_path is None:
        try:
            return base64.b64decode(_DATA_URL.sub("", image_base64, count=1), validate=True)
        except (binascii.Error, ValueError):
            raise ToolError(f"invalid_base64: {base64_arg} is not valid standard base64") from None
    if image_path is None or image_base64 is not None:
        raise ToolError(f"invalid_arguments: give exactly one of {path_arg} or {base64_arg}")
    try:
        return Path(image_path).expanduser().read_bytes()
    except OSError as exc:
        raise ToolError(f"image_unreadable: cannot read {path_arg} {image_path}: {exc.strerror or exc}") from None


def build_server(client: AgentClient, *, log_level: LogLevel = "WARNING") -> MCPServer:
    """An MCP server whose tools call the agent API through ``client``."""
    tools = OrfeasTools(client)
    server: MCPServer = MCPServer("orfeas", instructions=INSTRUCTIONS, log_level=log_level)
    read_only = ToolAnnotations(read_only_hint=True, open_world_hint=True)
    server.add_tool(
        tools.generate_3d_shape,
        title="Generate a 3D shape from an image",
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=True),
    )
    server.add_tool(tools.get_job, title="Get (or wait for) a job", annotations=read_only)
    server.add_tool(
        tools.download_mesh,
        title="Download a job's mesh to a file",
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True),
    )
    server.add_tool(tools.list_jobs, title="List jobs", annotations=read_only)
    server.add_tool(
        tools.cancel_job,
        title="Cancel a job",
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True),
    )
    return server


async def serve_streamable_http(
    server: MCPServer, host: str, port: int, on_ready: Callable[[str], None] = lambda url: None
) -> None:
    """Serve the streamable HTTP transport at http://host:port/mcp; ``on_ready`` gets the URL once it listens.

    The socket is bound here, so port 0 picks a free port and the URL names the real one.
    """
    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
        bound_port = sock.getsockname()[1]
        shown_host = f"[{host}]" if family == socket.AF_INET6 else host
        config = uvicorn.Config(server.streamable_http_app(host=host), log_level="warning", access_log=False)
        on_ready(f"http://{shown_host}:{bound_port}/mcp")
        await uvicorn.Server(config).serve(sockets=[sock])
    finally:
        sock.close()
