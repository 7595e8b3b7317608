"""The one interface artifact stores implement, and what all of them share.

Artifacts are addressed by relative POSIX paths (``inputs/job_x.png``, ``results/job_x/mesh-1.glb``); a
store maps them to files under the data directory (:mod:`serve_app.artifacts`) or to objects in a bucket
(:mod:`serve_app.artifacts_s3`). Every store keeps the same guarantees:

- a write replaces the whole artifact atomically: a reader sees the old bytes, the new bytes or nothing;
- writes raise ``OSError`` (the job store and the dispatcher map it to an answer or a retry), reads of a
  missing artifact raise ``FileNotFoundError``;
- deletes never raise: what cannot be removed now is logged and left to the retention sweeper.

Meshes are stored as the canonical GLB; another download format is converted from it on first request and
cached as an artifact next to it (:func:`mesh_artifact`), whichever store holds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Protocol

from deployments.contract import CANONICAL_FORMAT, MESH_FORMATS, MeshFormat
from deployments.mesh_io import export_mesh, load_mesh

if TYPE_CHECKING:
    from starlette.responses import Response


@dataclass(frozen=True)
class StoredFile:
    relpath: str
    mtime: float  # seconds since the epoch (an object's last-modified time)
    temporary: bool  # a leftover of an interrupted atomic write (object stores have none)


class ArtifactBackend(Protocol):
    """What the job store, the dispatcher, the retention sweeper and the result route use."""

    def put_bytes(self, relpath: str, data: bytes) -> object:
        """Write ``data`` at ``relpath`` atomically, replacing any previous artifact."""
        ...

    def read_bytes(self, relpath: str) -> bytes: ...

    def exists(self, relpath: str) -> bool: ...

    def delete(self, relpath: str) -> bool:
        """Remove one artifact; True when this call found and removed it."""
        ...

    def delete_tree(self, relpath: str) -> bool:
        """Remove everything under ``relpath/``; True when nothing is left (or nothing was there)."""
        ...

    def list_files(self, relpath: str) -> list[StoredFile]:
        """The artifacts directly inside ``relpath`` (none if there are none)."""
        ...

    async def download(self, relpath: str, *, media_type: str, filename: str) -> Response:
        """The HTTP answer that delivers the artifact to an agent; ``FileNotFoundError`` if it is gone."""
        ...


def check_relpath(relpath: str) -> PurePosixPath:
    """``relpath`` as a path; refuses anything that would leave the store's root."""
    parts = PurePosixPath(relpath).parts
    if not parts or relpath.startswith("/") or any(p in ("..", ".", "") for p in parts) or "\\" in relpath:
        raise ValueError(f"artifact path must be relative and inside the data directory, got {relpath!r}")
    return PurePosixPath(*parts)


def mesh_artifact(store: ArtifactBackend, canonical_relpath: str, fmt: MeshFormat) -> str:
    """The relpath of a stored mesh in ``fmt``, converting from the canonical GLB once and caching it.

    CPU work the first time: call it off the event loop. ``FileNotFoundError`` if the GLB is gone.
    """
    if fmt not in MESH_FORMATS:
        raise ValueError(f"format must be one of {list(MESH_FORMATS)}, got {fmt!r}")
    if fmt == CANONICAL_FORMAT:
        return canonical_relpath
    relpath = str(check_relpath(canonical_relpath).with_suffix("." + fmt))
    if not store.exists(relpath):
        mesh = load_mesh(store.read_bytes(canonical_relpath), CANONICAL_FORMAT)
        # Two concurrent downloads may both convert; the atomic write makes the last one win harmlessly.
        store.put_bytes(relpath, export_mesh(mesh, fmt))
    return relpath
