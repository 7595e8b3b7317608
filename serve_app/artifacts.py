"""Artifact storage on the local filesystem, and the mesh formats agents can download.

Every write is atomic: the bytes go to a hidden temp file in the target's own directory, are fsynced, and
replace the target with ``os.replace`` (atomic on POSIX within one filesystem); the directory is fsynced so
the rename itself survives a power cut. A reader therefore sees the old file, the new file or no file,
never a partial one, and a crash leaves at worst a ``.tmp-*`` file behind.

Meshes arrive from the model replica as GLB bytes (the canonical format) and are converted to the other
download formats on demand, then cached next to the GLB: storing all four at completion would quadruple
the disk for formats most agents never ask for.

Writes raise ``OSError`` as the filesystem does (``ENOSPC`` on a full disk, ``EROFS`` on a read-only one):
callers map it to an answer (``serve_app.errors``) or a retry. Deletes never raise: what cannot be removed now
is logged and left to the retention sweeper, so a failing disk cannot turn a cleanup into a second error.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from deployments.contract import CANONICAL_FORMAT, MESH_FORMATS, MeshFormat
from deployments.mesh_io import export_mesh, load_mesh

_TEMP_PREFIX = ".tmp-"

logger = logging.getLogger("orfeas.artifacts")


@dataclass(frozen=True)
class StoredFile:
    relpath: str
    mtime: float  # seconds since the epoch
    temporary: bool  # a leftover of an interrupted atomic write


class ArtifactStore:
    """Files under one data directory, addressed by relative POSIX paths such as ``results/job_x/mesh.glb``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, relpath: str) -> Path:
        """The absolute path of ``relpath``; refuses anything that would leave the data directory."""
        parts = PurePosixPath(relpath).parts
        if not parts or relpath.startswith("/") or any(p in ("..", ".", "") for p in parts) or "\\" in relpath:
            raise ValueError(f"artifact path must be relative and inside the data directory, got {relpath!r}")
        return self.root.joinpath(*parts)

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
        if fmt not in MESH_FORMATS:
            raise ValueError(f"format must be one of {list(MESH_FORMATS)}, got {fmt!r}")
        if fmt == CANONICAL_FORMAT:
            return self.path(canonical_relpath)
        relpath = str(PurePosixPath(canonical_relpath).with_suffix("." + fmt))
        if not self.exists(relpath):
            mesh = load_mesh(self.read_bytes(canonical_relpath), CANONICAL_FORMAT)
            # Two concurrent downloads may both convert; the atomic write makes the last one win harmlessly.
            self.put_bytes(relpath, export_mesh(mesh, fmt))
        return self.path(relpath)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
