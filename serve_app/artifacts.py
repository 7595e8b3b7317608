"""Artifact storage on the local filesystem (``app.artifacts: {kind: local}``, the default).

Every write is atomic: the bytes go to a hidden temp file in the target's own directory, are fsynced, and
replace the target with ``os.replace`` (atomic on POSIX within one filesystem); the directory is fsynced so
the rename itself survives a power cut. A reader therefore sees the old file, the new file or no file,
never a partial one, and a crash leaves at worst a ``.tmp-*`` file behind.

Meshes arrive from the model replica as GLB bytes (the canonical format) and are converted to the other
download formats on demand, then cached next to the GLB (:func:`serve_app.artifact_backend.mesh_artifact`):
storing all four at completion would quadruple the disk for formats most agents never ask for.

Writes raise ``OSError`` as the filesystem does (``ENOSPC`` on a full disk, ``EROFS`` on a read-only one):
callers map it to an answer (``serve_app.errors``) or a retry. Deletes never raise: what cannot be removed now
is logged and left to the retention sweeper, so a failing disk cannot turn a cleanup into a second error.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from starlette.responses import FileResponse, Response

from deployments.contract import MeshFormat
from serve_app.artifact_backend import StoredFile, check_relpath, mesh_artifact

_TEMP_PREFIX = ".tmp-"

logger = logging.getLogger("orfeas.artifacts")


__all__ = ["ArtifactStore", "LocalArtifactStore", "StoredFile"]


class LocalArtifactStore:
    """Files under one data directory, addressed by relative POSIX paths such as ``results/job_x/mesh.glb``.

    Implements :class:`serve_app.artifact_backend.ArtifactBackend`."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, relpath: str) -> Path:
        """The absolute path of ``relpath``; refuses anything that would leave the data directory."""
        return self.root.joinpath(*check_relpath(relpath).parts)

    def put_bytes(self, relpath: str, data: bytes) -> Path:
        """Write ``data`` at ``relpath`` atomically (replacing any previous file) and return its path."""
        target = self.path(relpath)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(prefix=_TEMP_PREFIX + target.name + ".", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp_name, target)
        except BaseException:
            # Never leave the half-written temp file behind; the target is untouched.
            Path(temp_name).unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)
        return target

    def read_bytes(self, relpath: str) -> bytes:
        return self.path(relpath).read_bytes()

    def exists(self, relpath: str) -> bool:
        return self.path(relpath).is_file()

    def delete(self, relpath: str) -> bool:
        """Remove one file; True when this call removed it (False: it was gone, or cannot be removed now)."""
        try:
            self.path(relpath).unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            logger.warning("could not delete artifact %s: %s", relpath, exc.strerror or type(exc).__name__)
            return False
        return True

    def delete_tree(self, relpath: str) -> bool:
        """Remove a directory and everything in it; True when it is gone (or never existed)."""
        target = self.path(relpath)
        try:
            shutil.rmtree(target)
        except FileNotFoundError:
            return True
        except OSError as exc:
            logger.warning("could not delete artifacts under %s: %s", relpath, exc.strerror or type(exc).__name__)
            return False
        return True

    def list_files(self, relpath: str) -> list[StoredFile]:
        """The plain files directly inside directory ``relpath`` (none if it does not exist)."""
        found: list[StoredFile] = []
        try:
            with os.scandir(self.path(relpath)) as entries:
                for entry in entries:
                    if entry.is_file(follow_symlinks=False):
                        found.append(
                            StoredFile(
                                relpath=f"{relpath}/{entry.name}",
                                mtime=entry.stat(follow_symlinks=False).st_mtime,
                                temporary=entry.name.startswith(_TEMP_PREFIX),
                            )
                        )
        except FileNotFoundError:
            pass
        return found

    def mesh_file(self, canonical_relpath: str, fmt: MeshFormat) -> Path:
        """The file of a stored mesh in ``fmt``, converting from the canonical GLB once and caching it."""
        return self.path(mesh_artifact(self, canonical_relpath, fmt))

    async def download(self, relpath: str, *, media_type: str, filename: str) -> Response:
        path = self.path(relpath)
        if not path.is_file():  # checked now: a FileResponse would only find out while sending
            raise FileNotFoundError(relpath)
        return FileResponse(path, media_type=media_type, filename=filename)


# The name from before there was more than one backend.
ArtifactStore = LocalArtifactStore


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
