"""Artifact storage in an S3-compatible bucket (``app.artifacts: {kind: s3, ...}``).

Built on obstore, the Python binding of the Rust ``object_store`` crate: one dependency that puts, gets
(streaming), lists, deletes in batches and presigns, with the AWS credential chain built in, and no
boto3/aiobotocore stack in the replicas.

The guarantees of :mod:`serve_app.artifact_backend` hold: a PUT replaces an object whole (S3 never shows a
partial object, so there are no temp files to sweep); errors of the store are raised as ``OSError`` (a
missing object as ``FileNotFoundError``) so that the callers' mapping to ``503 storage_unavailable`` and
to retries is the same for both backends; deletes never raise.
"""

from __future__ import annotations

import contextlib
import logging
import mimetypes
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import timedelta
from pathlib import PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import quote

import obstore
from obstore.exceptions import BaseError, NotFoundError
from obstore.store import S3Store
from starlette.responses import RedirectResponse, Response, StreamingResponse

from deployments.contract import CONTENT_TYPES
from serve_app.artifact_backend import StoredFile, check_relpath
from serve_app.artifact_settings import S3ArtifactSettings

if TYPE_CHECKING:  # only in the type stubs
    from obstore import BytesStream

logger = logging.getLogger("orfeas.artifacts")

_STREAM_CHUNK_BYTES = 1024 * 1024
_DELETE_BATCH = 1000  # the most keys one S3 DeleteObjects call takes
_MESH_TYPES: Mapping[str, str] = {str(fmt): media_type for fmt, media_type in CONTENT_TYPES.items()}


class S3ArtifactStore:
    """Objects in one bucket under ``settings.prefix``; implements
    :class:`serve_app.artifact_backend.ArtifactBackend`."""

    def __init__(self, settings: S3ArtifactSettings) -> None:
        self.settings = settings
        # Credentials and anything not set here come from the environment (AWS_* variables, web identity,
        # ECS task role, instance metadata): the object store client reads the standard AWS chain itself.
        self.store = S3Store(
            settings.bucket,
            prefix=settings.prefix or None,
            config={
                **({"endpoint": settings.endpoint_url} if settings.endpoint_url else {}),
                **({"region": settings.region} if settings.region else {}),
                "virtual_hosted_style_request": settings.virtual_hosted_style,
            },
            client_options={"allow_http": settings.allow_http},
        )

    def put_bytes(self, relpath: str, data: bytes) -> str:
        key = _key(relpath)
        with _as_oserror("writing", key):
            obstore.put(self.store, key, data, attributes={"Content-Type": _content_type(key)})
        return key

    def read_bytes(self, relpath: str) -> bytes:
        key = _key(relpath)
        with _as_oserror("reading", key):
            return bytes(obstore.get(self.store, key).bytes())

    def exists(self, relpath: str) -> bool:
        key = _key(relpath)
        try:
            with _as_oserror("looking up", key):
                obstore.head(self.store, key)
        except FileNotFoundError:
            return False
        return True

    def delete(self, relpath: str) -> bool:
        """Remove one object; True when it was there (S3's DELETE itself does not say)."""
        key = _key(relpath)
        try:
            if not self.exists(relpath):
                return False
            with _as_oserror("deleting", key):
                obstore.delete(self.store, key)
        except OSError as exc:
            logger.warning("could not delete artifact %s: %s", relpath, exc)
            return False
        return True

    def delete_tree(self, relpath: str) -> bool:
        """Remove every object under ``relpath/`` (a job's result "directory")."""
        prefix = _key(relpath) + "/"
        try:
            with _as_oserror("deleting under", prefix):
                for batch in obstore.list(self.store, prefix, chunk_size=_DELETE_BATCH):
                    obstore.delete(self.store, [meta["path"] for meta in batch])
        except OSError as exc:
            logger.warning("could not delete artifacts under %s: %s", relpath, exc)
            return False
        return True

    def list_files(self, relpath: str) -> list[StoredFile]:
        key = _key(relpath)
        with _as_oserror("listing", key):
            listing = obstore.list_with_delimiter(self.store, key)
        return [
            StoredFile(
                relpath=f"{relpath}/{PurePosixPath(meta['path']).name}",
                mtime=meta["last_modified"].timestamp(),
                temporary=False,
            )
            for meta in listing["objects"]
        ]

    async def download(self, relpath: str, *, media_type: str, filename: str) -> Response:
        key = _key(relpath)
        if self.settings.download == "redirect":
            with _as_oserror("looking up", key):
                await obstore.head_async(self.store, key)  # a gone result is a 410 here, not a 404 there
                url = await obstore.sign_async(
                    self.store, "GET", key, timedelta(seconds=self.settings.presign_expiry_s)
                )
            # 307: the agent repeats the GET at the bucket; the URL carries its own short-lived signature
            return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})
        with _as_oserror("reading", key):
            result = await obstore.get_async(self.store, key)
        headers = {"Content-Length": str(result.meta["size"]), "Content-Disposition": _attachment(filename)}
        return StreamingResponse(
            _chunks(result.stream(min_chunk_size=_STREAM_CHUNK_BYTES), key), media_type=media_type, headers=headers
        )


async def _chunks(stream: BytesStream, key: str) -> AsyncIterator[bytes]:
    with _as_oserror("streaming", key):
        async for chunk in stream:
            yield chunk


def _key(relpath: str) -> str:
    return str(check_relpath(relpath))


def _content_type(key: str) -> str:
    suffix = PurePosixPath(key).suffix.lstrip(".")
    return _MESH_TYPES.get(suffix) or mimetypes.guess_type(key)[0] or "application/octet-stream"


def _attachment(filename: str) -> str:
    """The ``Content-Disposition`` Starlette's ``FileResponse`` sends, so both backends answer alike."""
    quoted = quote(filename)
    if quoted != filename:
        return f"attachment; filename*=utf-8''{quoted}"
    return f'attachment; filename="{filename}"'


@contextlib.contextmanager
def _as_oserror(action: str, key: str) -> Iterator[None]:
    """The store's errors as ``OSError``; a missing object stays ``FileNotFoundError``."""
    try:
        yield
    except FileNotFoundError:
        raise
    except NotFoundError as exc:
        raise FileNotFoundError(key) from exc
    except BaseError as exc:
        raise OSError(f"object store error {action} {key}: {type(exc).__name__}") from exc
