"""Where the repository is: relative paths in configs name files in it, whatever directory Ray starts a
replica in (one definition for every config that names a file)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def resolve_path(path: str | Path) -> Path:
    """Relative paths name files in the repository, whatever directory Ray starts the replica in."""
    path = Path(path)
    return path if path.is_absolute() else REPO_ROOT / path
