"""The dispatcher's view of the model: one async call per job, image in, mesh out.

In the app the callable wraps the ShapeGenerator ``DeploymentHandle`` (one ``.remote`` per job; the
deployment batches concurrent calls); in tests it is a plain async function. Nothing here imports Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import trimesh


@dataclass(frozen=True)
class GenerationRequest:
    """One job's input. ``params`` holds ``GenerationParams.to_dict()`` keys as submitted (possibly a
    subset: the model fills defaults); ``model`` names the model the job was submitted for."""

    job_id: str
    image: bytes
    seed: int
    params: dict[str, Any]
    model: str
    # "critical" jobs skip the model's batch window (see deployments/shape_generator.py)
    priority: str = "normal"


@dataclass(frozen=True)
class MeshResult:
    """The model's output: an indexed triangle mesh and, optionally, the model's own stage timings in
    seconds (e.g. ``{"batch_size": 4, "dit_s": 1.2, "decode_s": 3.4}``), copied into the job's timings."""

    vertices: np.ndarray  # (V, 3) float
    faces: np.ndarray  # (F, 3) int
    timings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_trimesh(cls, mesh: trimesh.Trimesh, timings: dict[str, Any] | None = None) -> MeshResult:
        return cls(vertices=np.asarray(mesh.vertices), faces=np.asarray(mesh.faces), timings=dict(timings or {}))

    def to_trimesh(self) -> trimesh.Trimesh:
        # process=False: keep the mesh exactly as the model made it (no vertex merging or face removal).
        return trimesh.Trimesh(vertices=self.vertices, faces=self.faces, process=False)


class GenerateFn(Protocol):
    async def __call__(self, request: GenerationRequest) -> MeshResult: ...


class GenerationError(Exception):
    """A failure the model side can name: ``code`` goes to the job's error, ``retryable`` tells the agent
    whether submitting again may succeed (e.g. ``gpu_out_of_memory`` yes, ``invalid_image`` no). Any other
    exception from the callable is recorded as ``internal_error``, retryable."""

    def __init__(self, code: str, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
