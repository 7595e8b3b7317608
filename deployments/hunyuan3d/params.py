"""Generation parameters: validated once at the edge, then trusted by the pipeline."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

VolumeDecoderName = Literal["dense", "hierarchical", "adaptive"]
VOLUME_DECODERS: tuple[VolumeDecoderName, ...] = ("dense", "hierarchical", "adaptive")

# Bounds an API should enforce; the pipeline itself works outside them too, but not usefully.
MAX_INFERENCE_STEPS = 200
MIN_OCTREE_RESOLUTION = 16
MAX_OCTREE_RESOLUTION = 512
MAX_GUIDANCE_SCALE = 50.0


@dataclass(frozen=True)
class GenerationParams:
    """How one image becomes one mesh.

    ``num_inference_steps``: flow-matching steps (official default 50; turbo/fast models use 5-10).
    ``guidance_scale``: CFG scale, or the guidance embedding value for distilled (fast/turbo) models.
    ``octree_resolution``: R, the marching-cubes grid has (R+1)^3 points over [-box_v, box_v]^3.
    ``box_v``: half the edge of the decoded cube. ``mc_level``: iso level of the occupancy logits.
    ``volume_decoder``: ``dense`` decodes every grid point; ``hierarchical`` decodes coarse-to-fine, only where the
    surface is, with the dense mesh; ``adaptive`` adds FlashVDM's adaptive KV selection to it (faster, within a
    tested tolerance of dense: see docs/operations.md). ``num_chunks``: query points per geometry-decoder call
    (memory vs speed).
    """

    num_inference_steps: int = 50
    guidance_scale: float = 5.0
    octree_resolution: int = 256
    box_v: float = 1.01
    mc_level: float = 0.0
    volume_decoder: VolumeDecoderName = "hierarchical"
    num_chunks: int = 8000

    def __post_init__(self) -> None:
        _check_int("num_inference_steps", self.num_inference_steps, 1, MAX_INFERENCE_STEPS)
        _check_int("octree_resolution", self.octree_resolution, MIN_OCTREE_RESOLUTION, MAX_OCTREE_RESOLUTION)
        _check_int("num_chunks", self.num_chunks, 1_000, 10_000_000)
        _check_float("guidance_scale", self.guidance_scale, 0.0, MAX_GUIDANCE_SCALE)
        _check_float("box_v", self.box_v, 0.5, 2.0)
        _check_float("mc_level", self.mc_level, -1.0, 1.0)
        if self.volume_decoder not in VOLUME_DECODERS:
            raise ValueError(f"volume_decoder must be one of {list(VOLUME_DECODERS)}, got {self.volume_decoder!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> GenerationParams:
        """Build from untrusted input; unknown names are an error that lists the known ones."""
        values = dict(values or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown generation parameter(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def recommended_params(variant: str) -> GenerationParams:
    """What a released variant is meant to run with, by its folder name.

    Consistency-distilled (``-turbo``) models are trained for about 5 steps and guidance-distilled (``-fast``)
    ones for about 10; the others for the official 50. Guidance and resolution are the official defaults.
    """
    if variant.endswith("-turbo"):
        return GenerationParams(num_inference_steps=5)
    if variant.endswith("-fast"):
        return GenerationParams(num_inference_steps=10)
    return GenerationParams()


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")


def _check_float(name: str, value: object, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")
