"""What crosses the ShapeGenerator's DeploymentHandle, and the service's shared vocabulary.

One definition of each, imported by both sides: the job worker (``serve_app``) builds a
:class:`GenerationRequest` and gets back a :class:`GenerationResult` or a :class:`GenerationError`; the
agent API, the job store and the light client use the same priorities, mesh formats, seed bounds, job
statuses and error codes. This module imports neither torch nor Ray (nor numpy): the light agent client
and the HTTP ingress import it.

Ray pickles these values between processes, so they carry encoded bytes (the image in, GLB out), not
decoded pixels, tensors or trimesh objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal, get_args

from deployments.hunyuan3d.params import GenerationParams

# --- priorities, formats, seeds, statuses -----------------------------------------------------------------

Priority = Literal["normal", "critical"]
PRIORITIES: tuple[Priority, ...] = get_args(Priority)
"""``critical`` jobs are claimed first and skip the model's batch window (they run alone, next)."""

MeshFormat = Literal["glb", "obj", "stl", "ply"]
MESH_FORMATS: tuple[MeshFormat, ...] = get_args(MeshFormat)
# The model returns GLB and the store keeps it; other formats are converted from it on download.
CANONICAL_FORMAT: MeshFormat = "glb"
# IANA-registered types where one exists. PLY has no registered type; application/x-ply is the one
# desktop mesh tools and freedesktop.org use.
CONTENT_TYPES: dict[MeshFormat, str] = {
    "glb": "model/gltf-binary",
    "obj": "model/obj",
    "stl": "model/stl",
    "ply": "application/x-ply",
}

# Seeds agents send and seeds the service draws: at most 2^53 - 1, the largest integer a JSON number keeps
# exactly in parsers that read numbers as doubles (JavaScript). 64-bit torch generators and the BIGINT
# column hold them with room to spare.
MAX_SEED = 2**53 - 1

# The named views of a multiview (Hunyuan3D-2mv) job. ``front`` is the job's ``image``; the others are optional.
ViewName = Literal["front", "left", "back", "right"]
VIEW_NAMES: tuple[ViewName, ...] = get_args(ViewName)
FRONT_VIEW: ViewName = "front"
"""A single-image model sees only this view; a job without ``views`` is a front-only job."""

RemoveBackground = Literal["auto", "always", "never"]
REMOVE_BACKGROUND_MODES: tuple[RemoveBackground, ...] = get_args(RemoveBackground)
"""``auto``: remove the background only when the image has no meaningful alpha channel."""

# What the official Hunyuan3D API server reduces every mesh to.
DEFAULT_MAX_FACES = 40_000
# A budget below this would leave too little of any object; 0 means no reduction at all.
MIN_FACE_BUDGET = 1_000
MAX_FACES_LIMIT = 2_000_000

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled", "expired"]
JOB_STATUSES: tuple[JobStatus, ...] = get_args(JobStatus)
TERMINAL_STATUSES: frozenset[JobStatus] = frozenset({"succeeded", "failed", "cancelled", "expired"})


# --- error codes ----------------------------------------------------------------------------------------


class ErrorCode(str, Enum):
    """Why a job failed: the ``error.code`` of a failed or expired job.

    ``retryable``: whether submitting the same request again may succeed (memory pressure passes, replicas
    come back, bugs get fixed); the others are properties of the input itself. ``meaning`` is what the
    agent guide's table says (docs/agent-guide.md is tested against this enum).
    """

    INVALID_IMAGE = "invalid_image"
    NO_FOREGROUND = "no_foreground"
    INVALID_REQUEST = "invalid_request"
    EMPTY_SURFACE = "empty_surface"
    OUT_OF_MEMORY = "out_of_memory"
    MODEL_UNAVAILABLE = "model_unavailable"
    WORKER_LOST = "worker_lost"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    INTERNAL_ERROR = "internal_error"

    @property
    def retryable(self) -> bool:
        return _ERROR_DETAILS[self][0]

    @property
    def meaning(self) -> str:
        return _ERROR_DETAILS[self][1]


# code -> (retryable, meaning); tests check that every code has an entry
_ERROR_DETAILS: dict[ErrorCode, tuple[bool, str]] = {
    ErrorCode.INVALID_IMAGE: (False, "the model could not decode the image, or nothing is visible in it"),
    ErrorCode.NO_FOREGROUND: (False, "nothing, or almost nothing, of the image is left after background removal"),
    ErrorCode.INVALID_REQUEST: (False, "the parameters are not valid for this model"),
    ErrorCode.EMPTY_SURFACE: (False, "the model found no surface in this image; try another image or seed"),
    ErrorCode.OUT_OF_MEMORY: (True, "the GPU ran out of memory even for this job alone"),
    ErrorCode.MODEL_UNAVAILABLE: (True, "the model replica failed or vanished on every attempt (`jobs.max_attempts`)"),
    ErrorCode.WORKER_LOST: (True, "the worker running the job stopped responding on every attempt"),
    ErrorCode.DEADLINE_EXCEEDED: (True, "the job was not started before its deadline (status `expired`)"),
    ErrorCode.INTERNAL_ERROR: (True, "a bug; the job's message and the server log say more"),
}


class GenerationError(Exception):
    """One request failed; its batch-mates did not.

    ``ShapeGenerator.generate`` RETURNS it (a raised exception would fail a whole Serve batch), so the caller
    gets it through the handle as a value with its ``code`` intact.
    """

    def __init__(self, code: ErrorCode | str, message: str, job_id: str | None = None) -> None:
        self.code = ErrorCode(code)
        self.message = message
        self.job_id = job_id
        super().__init__(f"{self.code.value}: {message}")

    @property
    def retryable(self) -> bool:
        return self.code.retryable

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception pickling replays self.args (the formatted text); rebuild from the fields instead
        return (type(self), (self.code.value, self.message, self.job_id))


# --- request and result ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeshOptions:
    """The clean-up of one job's mesh in the replica's CPU section (not part of the batch key).

    ``max_faces``: quadric decimation down to at most this many faces (0: no reduction).
    ``remove_floaters``: drop connected pieces that are small next to the largest one.
    """

    max_faces: int = DEFAULT_MAX_FACES
    remove_floaters: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.max_faces, bool) or not isinstance(self.max_faces, int):
            raise ValueError(f"max_faces must be an integer, got {self.max_faces!r}")
        if self.max_faces != 0 and not MIN_FACE_BUDGET <= self.max_faces <= MAX_FACES_LIMIT:
            raise ValueError(
                f"max_faces must be 0 (no reduction) or between {MIN_FACE_BUDGET} and {MAX_FACES_LIMIT}, "
                f"got {self.max_faces}"
            )
        if not isinstance(self.remove_floaters, bool):
            raise ValueError(f"remove_floaters must be true or false, got {self.remove_floaters!r}")


@dataclass(frozen=True)
class GenerationRequest:
    """One job for the model: an image, its seed, its parameters and how urgent it is.

    ``image``: the encoded PNG/JPEG/WebP bytes as the agent sent them (decoded once, in the replica).
    ``params``: a :class:`GenerationParams`, or a dict of its fields (validated here, raising ``ValueError``
    in the caller's process, so a bad parameter never reaches the GPU queue).
    ``job_id``: echoed in the result or error so both sides can log against it.
    ``remove_background`` and ``mesh`` act on this request alone, before and after the batched pass.
    ``views``: a multiview job's OTHER views (``left``, ``back``, ``right``: encoded bytes each); ``image`` is
    always the front view. Empty for single-image jobs. The set of view names is part of the batch key.
    """

    image: bytes
    seed: int = 0
    params: GenerationParams = field(default_factory=GenerationParams)
    priority: Priority = "normal"
    job_id: str | None = None
    remove_background: RemoveBackground = "auto"
    mesh: MeshOptions = field(default_factory=MeshOptions)
    views: Mapping[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.image, (bytearray, memoryview)):
            object.__setattr__(self, "image", bytes(self.image))
        if not isinstance(self.image, bytes):
            raise TypeError(f"image must be the encoded image bytes, got {type(self.image).__name__}")
        if not self.image:
            raise ValueError("image is empty: send the encoded PNG, JPEG or WebP bytes")
        check_seed(self.seed)
        if isinstance(self.params, dict):
            object.__setattr__(self, "params", GenerationParams.from_dict(self.params))
        elif not isinstance(self.params, GenerationParams):
            raise TypeError(f"params must be GenerationParams or a dict, got {type(self.params).__name__}")
        if self.priority not in PRIORITIES:
            raise ValueError(f"priority must be one of {list(PRIORITIES)}, got {self.priority!r}")
        if self.remove_background not in REMOVE_BACKGROUND_MODES:
            raise ValueError(
                f"remove_background must be one of {list(REMOVE_BACKGROUND_MODES)}, got {self.remove_background!r}"
            )
        if not isinstance(self.mesh, MeshOptions):
            raise TypeError(f"mesh must be MeshOptions, got {type(self.mesh).__name__}")
        check_view_names(self.views, extra_only=True)
        object.__setattr__(self, "views", {name: bytes(data) for name, data in self.views.items()})
        for name, data in self.views.items():
            if not data:
                raise ValueError(f"view {name!r} is empty: send the encoded PNG, JPEG or WebP bytes")

    @property
    def view_names(self) -> tuple[ViewName, ...]:
        """Every view this request carries, front first, in :data:`VIEW_NAMES` order."""
        return tuple(name for name in VIEW_NAMES if name == FRONT_VIEW or name in self.views)

    @classmethod
    def from_job_params(
        cls,
        image: bytes,
        seed: int,
        params: Mapping[str, Any],
        priority: Priority = "normal",
        job_id: str | None = None,
        views: Mapping[str, bytes] | None = None,
    ) -> GenerationRequest:
        """A request from a job's flat ``params`` (as the API stores them): the :class:`GenerationParams` fields
        plus ``max_faces``, ``remove_floaters`` and ``remove_background``; missing ones take their defaults."""
        generation, mesh, remove_background = split_job_params(params)
        return cls(image, seed, generation, priority, job_id, remove_background, mesh, dict(views or {}))


def check_view_names(names: Mapping[str, Any] | Any, extra_only: bool = False) -> None:
    """Raise ``ValueError`` naming an unknown view; ``extra_only``: ``front`` may not appear (it is the image)."""
    allowed = [name for name in VIEW_NAMES if not (extra_only and name == FRONT_VIEW)]
    for name in names:
        if name not in allowed:
            raise ValueError(f"unknown view {name!r}; views are {allowed}")


@dataclass(frozen=True)
class MeshStats:
    """What an agent sees about a mesh in the job status (JSON-friendly through :meth:`to_dict`)."""

    vertices: int
    faces: int
    area: float
    bounds: tuple[tuple[float, float, float], tuple[float, float, float]]
    watertight: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "vertices": self.vertices,
            "faces": self.faces,
            "area": self.area,
            "bounds": [list(self.bounds[0]), list(self.bounds[1])],
            "watertight": self.watertight,
        }


@dataclass(frozen=True)
class GenerationResult:
    """One mesh, exported in the replica, and how it was made.

    ``glb``: the mesh as binary glTF, in the official Hunyuan3D frame (what the store keeps).
    ``timings``: wall-clock seconds per stage of the pass this item rode in (the whole pass, all
    ``batch_size`` items, not a per-item share), export included. ``queue_wait_s``: from arrival at the
    replica to the start of its GPU pass. ``cleanup``: what this mesh's clean-up did (faces before and
    after, pieces dropped, seconds per step).
    """

    glb: bytes
    stats: MeshStats
    timings: dict[str, float]
    batch_size: int
    queue_wait_s: float
    seed: int
    job_id: str | None = None
    cleanup: dict[str, Any] = field(default_factory=dict)


Outcome = GenerationResult | GenerationError


def split_job_params(
    params: Mapping[str, Any],
) -> tuple[GenerationParams, MeshOptions, RemoveBackground]:
    """A job's flat params -> what shapes the batched pass, the mesh clean-up, and the background mode.

    Missing names take their defaults; a bad value or an unknown name raises ``ValueError`` naming it.
    """
    rest = dict(params)
    mesh = MeshOptions(
        max_faces=rest.pop("max_faces", DEFAULT_MAX_FACES), remove_floaters=rest.pop("remove_floaters", True)
    )
    remove_background = rest.pop("remove_background", "auto")
    if remove_background not in REMOVE_BACKGROUND_MODES:
        raise ValueError(f"remove_background must be one of {list(REMOVE_BACKGROUND_MODES)}, got {remove_background!r}")
    return GenerationParams.from_dict(rest), mesh, remove_background


def check_seed(seed: object) -> int:
    """``seed`` if it is an integer in 0..MAX_SEED, else ``ValueError`` naming the bounds."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an integer between 0 and {MAX_SEED}, got {seed!r}")
    return seed
