"""The project's own batch-first implementation of the Hunyuan3D-2 shape pipeline (no Ray, no hy3dgen)."""

from .checkpoint import CheckpointError
from .config import ShapeModelConfig, UnsupportedModelError, named_config
from .image_processing import EmptyImageError
from .params import GenerationParams
from .pipeline import STAGES, ShapePipeline, StageTimings
from .surface import EmptySurfaceError

__all__ = [
    "STAGES",
    "CheckpointError",
    "EmptyImageError",
    "EmptySurfaceError",
    "GenerationParams",
    "ShapeModelConfig",
    "ShapePipeline",
    "StageTimings",
    "UnsupportedModelError",
    "named_config",
]
