"""Shared helpers for the reference scripts (run in the *reference* venv only).

Imports the OFFICIAL hy3dgen 2.0.2 shape-generation code.  The only thing
changed is the import environment: ``hy3dgen.shapegen/__init__.py`` imports
``postprocessors.py``, which does ``import pymeshlab`` at module level (used
only by the mesh post-processors FaceReducer/FloaterRemover/..., which these
scripts never call).  pymeshlab is a heavy native wheel that is not needed for
shape generation, so we register an empty stand-in module in ``sys.modules``
before importing hy3dgen.  No hy3dgen math is patched.
"""

from __future__ import annotations

import os
import sys
import types

REPO_ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
TINY_ROOT = os.path.join(REPO_ROOT, "configs", "models", "tiny-Hunyuan3D-2")
IMAGES_DIR = os.path.join(REPO_ROOT, "tests", "fixtures", "images")
PARITY_DIR = os.path.join(REPO_ROOT, "tests", "fixtures", "parity")
MODEL_FOLDERS = ("hunyuan3d-dit-v2-0", "hunyuan3d-dit-v2-0-fast")


def install_pymeshlab_stub() -> None:
    """STUB (import-time only): pymeshlab is imported by hy3dgen.shapegen.postprocessors
    but only used by the mesh post-processors, which we never call.  Provide an
    empty module with a ``MeshSet`` placeholder (referenced in a type annotation)."""
    if "pymeshlab" in sys.modules:
        return
    try:  # use the real one if it happens to be installed
        import pymeshlab  # noqa: F401

        return
    except ImportError:
        pass
    stub = types.ModuleType("pymeshlab")

    class MeshSet:  # placeholder, never instantiated here
        def __init__(self, *a, **k):
            raise RuntimeError("pymeshlab stub: mesh post-processing is not available in the reference venv")

    stub.MeshSet = MeshSet
    stub.__dict__["__hy3dgen_ref_stub__"] = True
    sys.modules["pymeshlab"] = stub


def import_shapegen():
    install_pymeshlab_stub()
    import hy3dgen.shapegen as shapegen

    return shapegen
