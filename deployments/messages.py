"""What crosses the ShapeGenerator's DeploymentHandle: one request in, one result or one error out.

Ray pickles these between the ingress and the model replica, so they carry encoded image bytes and numpy
arrays, not decoded pixels or trimesh objects (a Trimesh pickles its caches too). Validation happens when
a request is built, i.e. in the caller's process, so a bad parameter never reaches the GPU queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
from PIL import Image

from .hunyuan3d.params import GenerationParams

if TYPE_CHECKING:
    import trimesh

Priority = Literal["normal", "critical"]
ErrorCode = Literal["invalid_image", "out_of_memory", "empty_surface", "internal"]

# Codes for which sending the same request again may succeed (memory pressure passes, bugs get fixed);
# the other codes are properties of the input.
RETRYABLE_CODES: frozenset[ErrorCode] = frozenset({"out_of_memory", "internal"})
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class GenerationRequest:
    """One job for the model: an image, its seed, its parameters and how urgent it is.

    ``image``: encoded PNG/JPEG/WebP bytes (preferred: small to pickle) or a PIL image.
    ``params``: a :class:`GenerationParams` or a dict of its fields (validated here, raising ``ValueError``).
    ``priority``: ``critical`` skips batching and runs alone as soon as the current GPU pass ends.
    ``job_id``: echoed in the result or error so the caller can log against it.
    """

    image: bytes | Image.Image
    seed: int = 0
    params: GenerationParams = field(default_factory=GenerationParams)
    priority: Priority = "normal"
    job_id: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.image, (bytearray, memoryview)):
            object.__setattr__(self, "image", bytes(self.image))
        if not isinstance(self.image, (bytes, Image.Image)):
            raise TypeError(f"image must be encoded bytes or a PIL image, got {type(self.image).__name__}")
        if isinstance(self.image, bytes) and not self.image:
            raise ValueError("image is empty: send the encoded PNG, JPEG or WebP bytes")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be an integer between 0 and {MAX_SEED}, got {self.seed!r}")
        if isinstance(self.params, dict):
            object.__setattr__(self, "params", GenerationParams.from_dict(self.params))
        elif not isinstance(self.params, GenerationParams):
            raise TypeError(f"params must be GenerationParams or a dict, got {type(self.params).__name__}")
        if self.priority not in get_args(Priority):
            raise ValueError(f"priority must be one of {list(get_args(Priority))}, got {self.priority!r}")


@dataclass(frozen=True)
class GenerationResult:
    """One mesh, in the official Hunyuan3D frame, plus how it was made.

    ``timings``: wall-clock seconds per stage of the GPU pass and surface extraction this item rode in;
    they cover the whole pass (all ``batch_size`` items), not a per-item share.
    ``queue_wait_s``: from arrival at the replica to the start of its GPU pass.
    """

    vertices: np.ndarray  # (V, 3) float32
    faces: np.ndarray  # (F, 3) int64, indices into vertices
    timings: dict[str, float]
    batch_size: int
    queue_wait_s: float
    seed: int
    job_id: str | None = None

    def to_trimesh(self) -> trimesh.Trimesh:
        import trimesh

        # process=False: the arrays are already merged and wound by the pipeline; keep them bit-identical
        return trimesh.Trimesh(self.vertices, self.faces, process=False)


class GenerationError(Exception):
    """One request failed; its batch-mates did not.

    Returned (not raised) by ``ShapeGenerator.generate`` so a caller gets it through the handle as a value
    with its ``code`` intact. Codes: ``invalid_image`` (undecodable or nothing visible), ``out_of_memory``
    (the item failed even alone), ``empty_surface`` (the decoded volume has no surface; another seed may
    work), ``internal`` (a bug; logged with a traceback in the replica).
    """

    def __init__(self, code: ErrorCode, message: str, job_id: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code: ErrorCode = code
        self.message = message
        self.job_id = job_id

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE_CODES

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "retryable": self.retryable, "job_id": self.job_id}

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception pickling replays self.args (the formatted text); rebuild from the fields instead
        return (type(self), (self.code, self.message, self.job_id))


Outcome = GenerationResult | GenerationError
