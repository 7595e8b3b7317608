"""The agent-side SDK: a small synchronous client for the ORFEAS agent API.

Imports only httpx, the standard library and ``serve_app.auth.signing``, so an agent can use it without
Ray, torch, SQLAlchemy or Starlette installed. Every request is signed by :class:`AgentSigner`; every
error response becomes an :class:`ApiRequestError` carrying the server's code and request id.

    with AgentClient.from_key_file() as client:
        job = client.submit("cat.png", seed=7, params={"octree_resolution": 256})
        done = client.wait(job["job_id"])
        client.download(done["job_id"], "glb", path="cat.glb")

A multiview model takes named views instead of one image: ``client.submit(views={"front": "cat.png",
"left": "cat-left.png"})`` (``front`` required; ``left``, ``back``, ``right`` optional).
"""

from __future__ import annotations

import base64
import builtins
import email.utils
import io
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from deployments.contract import TERMINAL_STATUSES, MeshFormat, Priority
from serve_app.auth.signing import AgentSigner

API = "/api/agent"
DEFAULT_KEY_FILE = Path(".orfeas") / "dev-agent.json"
# with a progress callback, `wait` long-polls at most this long per request, so stage changes show promptly
PROGRESS_POLL_S = 1.0

# path, raw bytes, or anything with PIL's ``save(fp, format=...)`` (not imported: the SDK does not need PIL)
ImageInput = str | os.PathLike[str] | bytes | Any
# a multiview job's images by view name: front (required), left, back, right
ViewsInput = Mapping[str, ImageInput]


class ApiRequestError(Exception):
    """An error answer from the API, built from its JSON body ``{type, code, message, retryable, request_id}``.

    ``retry_after`` is the Retry-After header in seconds (429 and 503 carry it), else None.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        retryable: bool = False,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retryable = retryable
        self.request_id = request_id
        self.retry_after = retry_after

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiRequestError:
        request_id = response.headers.get("x-request-id")
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or "code" not in body:
            # not our error shape (a proxy in between answered): keep what we can
            text = response.text.strip().replace("\n", " ")[:200]
            retryable = response.status_code == 429 or response.status_code >= 500
            return cls(
                response.status_code,
                f"http_{response.status_code}",
                text or response.reason_phrase,
                retryable,
                request_id,
                _retry_after(response),
            )
        return cls(
            response.status_code,
            str(body["code"]),
            str(body.get("message", "")),
            bool(body.get("retryable")),
            body.get("request_id") or request_id,
            _retry_after(response),
        )


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After as seconds: the delta form, or an HTTP date converted to a delay from now."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def image_base64(image: ImageInput) -> str:
    """Standard base64 of an image given as a path, raw bytes or a PIL image (sent as PNG)."""
    if isinstance(image, (bytes, bytearray)):
        data = bytes(image)
    elif isinstance(image, (str, os.PathLike)):
        data = Path(image).read_bytes()
    elif hasattr(image, "save"):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
    else:
        raise TypeError(f"image must be a path, bytes or a PIL image, got {type(image).__name__}")
    return base64.b64encode(data).decode("ascii")


def views_base64(views: ViewsInput) -> dict[str, str]:
    """Each view's image as :func:`image_base64`; the names go as given (the server checks them)."""
    if not isinstance(views, Mapping):
        raise TypeError(f"views must map view names to images, got {type(views).__name__}")
    return {str(name): image_base64(image) for name, image in views.items()}


def _job_input(image: ImageInput | None, views: ViewsInput | None) -> dict[str, Any]:
    """The ``image`` or ``views`` field of a job or batch item: exactly one of them."""
    if (image is None) == (views is None):
        raise ValueError("give exactly one of image or views (views={'front': ..., 'left': ...})")
    return {"image": image_base64(image)} if views is None else {"views": views_base64(views)}


class AgentClient:
    """Signed calls to the agent API; one ``httpx.Client`` (connection pool) per instance.

    ``max_retries`` applies to submissions that carry an idempotency key only: those are safe to resend,
    so retryable errors (queue full, rate limited, a request still in flight) and connection failures are
    retried, waiting for Retry-After when the server gives one. A Retry-After longer than
    ``max_retry_wait_s`` is raised at once rather than slept through (an auth backoff can last minutes).
    ``sleep`` exists for tests.
    """

    def __init__(
        self,
        base_url: str,
        key_id: str,
        secret_b64: str,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        max_retries: int = 3,
        retry_backoff_s: float = 1.0,
        max_retry_wait_s: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_backoff_s = retry_backoff_s
        self.max_retry_wait_s = max_retry_wait_s
        self._sleep = sleep
        self._max_wait_s: float | None = None
        self._http = httpx.Client(
            base_url=self.base_url, auth=AgentSigner(key_id, secret_b64), timeout=timeout, transport=transport
        )

    @classmethod
    def from_key_file(
        cls, path: str | os.PathLike[str] = DEFAULT_KEY_FILE, base_url: str | None = None, **kwargs: Any
    ) -> AgentClient:
        """A client from a key file ``{"key_id", "secret", "url"}`` (dev mode writes ``.orfeas/dev-agent.json``)."""
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no key file at {path}; start the service in dev mode (it writes one) or pass --key-file"
            ) from None
        except ValueError as exc:
            raise ValueError(f"key file {path} is not JSON: {exc}") from None
        missing = [name for name in ("key_id", "secret") if not isinstance(data.get(name), str)]
        if missing:
            raise ValueError(f"key file {path} lacks {missing}; it needs key_id, secret and (optionally) url")
        url = base_url or data.get("url")
        if not url:
            raise ValueError(f"key file {path} has no 'url'; pass base_url")
        return cls(url, data["key_id"], data["secret"], **kwargs)

    def __repr__(self) -> str:
        return f"AgentClient({self.base_url!r})"

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ---- plumbing -------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._http.request(method, f"{API}{path}", **kwargs)
        if response.status_code >= 400:
            raise ApiRequestError.from_response(response)
        return response

    def _post_json(self, path: str, body: Mapping[str, Any], idempotency_key: str | None) -> dict[str, Any]:
        # Serialized once: a retry must send the very same bytes, or the server sees a different request.
        content = json.dumps(body, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        retries = self.max_retries if idempotency_key is not None else 0
        for attempt in range(retries + 1):
            try:
                return self._request("POST", path, content=content, headers=headers).json()
            except ApiRequestError as exc:
                delay = exc.retry_after
                if attempt == retries or not exc.retryable or (delay or 0.0) > self.max_retry_wait_s:
                    raise
            except httpx.TransportError:
                if attempt == retries:
                    raise
                delay = None
            self._sleep(delay if delay is not None else self.retry_backoff_s * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    # ---- submitting -----------------------------------------------------------------------------------

    def submit(
        self,
        image: ImageInput | None = None,
        *,
        views: ViewsInput | None = None,
        seed: int | None = None,
        params: Mapping[str, Any] | None = None,
        priority: Priority = "normal",
        idempotency_key: str | None = None,
        model: str | None = None,
    ) -> dict[str, Any]:
        """Queue one job; returns its view (``job_id``, ``status`` "queued", ``status_url``, ...).

        Give ``image``, or ``views`` for a multiview job: ``{"front": image, "left": ..., "back": ...,
        "right": ...}``, front required, each a path, bytes or PIL image like ``image``.
        ``model``: one of ``capabilities()["models"]`` names; None: the service's default model.
        """
        body: dict[str, Any] = {**_job_input(image, views), "priority": priority}
        if model is not None:
            body["model"] = model
        if seed is not None:
            body["seed"] = seed
        if params is not None:
            body["params"] = dict(params)
        return self._post_json("/jobs", body, idempotency_key)

    def submit_batch(
        self,
        images: Iterable[ImageInput | ViewsInput],
        *,
        seeds: Sequence[int | None] | None = None,
        params: Mapping[str, Any] | None = None,
        priority: Priority = "normal",
        idempotency_key: str | None = None,
        model: str | None = None,
    ) -> dict[str, Any]:
        """Queue several jobs at once, same params and model (None: the default); returns
        ``{batch_id, status_url, jobs}``.

        Each item is an image, or a mapping of view names to images (a multiview job, as ``submit(views=)``).
        """
        items: list[dict[str, Any]] = [
            _job_input(None, item) if isinstance(item, Mapping) else _job_input(item, None) for item in images
        ]
        if seeds is not None:
            if len(seeds) != len(items):
                raise ValueError(f"got {len(seeds)} seeds for {len(items)} images; give one per image (or None)")
            for item, seed in zip(items, seeds, strict=True):
                if seed is not None:
                    item["seed"] = seed
        body: dict[str, Any] = {"items": items, "priority": priority}
        if model is not None:
            body["model"] = model
        if params is not None:
            body["params"] = dict(params)
        return self._post_json("/batches", body, idempotency_key)

    # ---- reading jobs ---------------------------------------------------------------------------------

    def get(self, job_id: str, *, wait: float | None = None) -> dict[str, Any]:
        """The job's view; ``wait`` long-polls up to that many seconds (at most the server's max_wait_s)."""
        if wait is None:
            return self._request("GET", f"/jobs/{job_id}").json()
        # the server may hold the request for `wait` seconds: the read timeout must outlast it
        timeout = httpx.Timeout(self.timeout, read=self.timeout + wait)
        return self._request("GET", f"/jobs/{job_id}", params={"wait": f"{wait:g}"}, timeout=timeout).json()

    def wait(
        self,
        job_id: str,
        *,
        timeout: float = 600,
        poll_s: float | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Long-poll until the job is succeeded, failed, cancelled or expired; TimeoutError after ``timeout``.

        ``poll_s`` is how long each request may wait on the server; default: the server's max_wait_s, or at
        most :data:`PROGRESS_POLL_S` with ``on_progress``. The long-poll returns when the job finishes, so
        progress needs shorter polls: ``on_progress(view)`` gets each fetched view whose status, stage or
        progress differs from the previous one (the terminal view included).
        """
        step = self._server_max_wait() if poll_s is None else poll_s
        if on_progress is not None and poll_s is None:
            step = min(step, PROGRESS_POLL_S)
        deadline = time.monotonic() + timeout
        seen: tuple[Any, ...] | None = None
        while True:
            remaining = deadline - time.monotonic()
            wait = max(0.0, min(step, remaining))
            job = self.get(job_id, wait=wait)
            state = (job["status"], job.get("stage"), job.get("progress"))
            if on_progress is not None and state != seen:
                on_progress(job)
                seen = state
            if job["status"] in TERMINAL_STATUSES:
                return job
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout:g} s")
            if step <= 0:
                # the server does not hold requests (max_wait_s 0): pace the polling ourselves
                self._sleep(min(1.0, remaining))

    def _server_max_wait(self) -> float:
        if self._max_wait_s is None:
            self._max_wait_s = float(self.capabilities()["limits"]["max_wait_s"])
        return self._max_wait_s

    def download(self, job_id: str, format: MeshFormat = "glb", path: str | os.PathLike[str] | None = None) -> bytes:
        """The mesh of a succeeded job in ``format`` (glb, obj, stl, ply); also written to ``path`` if given."""
        response = self._request("GET", f"/jobs/{job_id}/result", params={"format": format})
        if response.status_code == 307:  # artifacts in a bucket with `download: redirect`
            # the presigned URL is its own credential: fetched unsigned (the agent's signature is for the API)
            response = self._http.get(response.headers["location"], auth=None)
            response.raise_for_status()
        data = response.content
        if path is not None:
            Path(path).write_bytes(data)
        return data

    def list(self, status: str | None = None, limit: int = 50, cursor: str | None = None) -> dict[str, Any]:
        """One page ``{jobs, next_cursor}``, newest first."""
        params: dict[str, str | int] = {"limit": limit}
        if status is not None:
            params["status"] = status
        if cursor is not None:
            params["cursor"] = cursor
        return self._request("GET", "/jobs", params=params).json()

    def iter_jobs(self, status: str | None = None, page_size: int = 50) -> Iterator[dict[str, Any]]:
        """Every job (of ``status``), newest first, following ``next_cursor`` page by page."""
        cursor = None
        while True:
            page = self.list(status=status, limit=page_size, cursor=cursor)
            yield from page["jobs"]
            cursor = page["next_cursor"]
            if cursor is None:
                return

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job; 409 job_finished if it already ended otherwise."""
        return self._request("DELETE", f"/jobs/{job_id}").json()

    def batch(self, batch_id: str) -> dict[str, Any]:
        return self._request("GET", f"/batches/{batch_id}").json()

    def capabilities(self) -> dict[str, Any]:
        return self._request("GET", "/capabilities").json()

    def create_webhook(self, url: str, events: Sequence[str]) -> dict[str, Any]:
        """Register an endpoint for job events; the answer's ``secret`` (``whsec_...``) is shown only this once."""
        return self._request("POST", "/webhooks", json={"url": url, "events": list(events)}).json()

    def webhooks(self) -> builtins.list[dict[str, Any]]:  # `list` here is the method above
        """This agent's webhook endpoints with their state (``active`` or ``disabled`` with the reason)."""
        return self._request("GET", "/webhooks").json()["webhooks"]

    def delete_webhook(self, webhook_id: str) -> None:
        self._request("DELETE", f"/webhooks/{webhook_id}")

    def events(self, job_id: str) -> Iterator[dict[str, Any]]:
        """The job's server-sent events as JSON objects, until it finishes (the server closes the stream)."""
        # a queued job may stay silent for long: no read timeout on the stream
        timeout = httpx.Timeout(self.timeout, read=None)
        with self._http.stream("GET", f"{API}/jobs/{job_id}/events", timeout=timeout) as response:
            if response.status_code >= 400:
                response.read()
                raise ApiRequestError.from_response(response)
            data: list[str] = []
            for line in response.iter_lines():
                if line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))
                elif not line and data:  # a blank line ends an event
                    yield json.loads("\n".join(data))
                    data = []
            if data:
                yield json.loads("\n".join(data))
