"""The project's own batch-first implementation of the Hunyuan3D-2 shape pipeline (no Ray, no hy3dgen).

Configs and generation parameters import without torch (the HTTP ingress validates requests with them);
the pipeline and everything that needs torch load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .config import ShapeModelConfig, UnsupportedModelError, named_config
from .params import GenerationParams

_LAZY = {
    "CheckpointError": ".checkpoint",
    "EmptyImageError": ".image_processing",
    "EmptySurfaceError": ".surface",
    "STAGES": ".pipeline",
    "ShapePipeline": ".pipeline",
    "StageTimings": ".pipeline",
}

__all__ = ["GenerationParams", "ShapeModelConfig", "UnsupportedModelError", "named_config", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
