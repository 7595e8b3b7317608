"""The ShapeGenerator's two typed configs: what the replica is (init args) and how it batches (user_config).

``GeneratorConfig`` enters once, at the application builder (``args:`` in the serve config), and reaches
the replica's constructor unchanged; changing it restarts replicas. ``BatchingConfig`` is the deployment's
``user_config``: Serve hands it to ``reconfigure`` at start and on every ``serve deploy`` that changes it,
so batch settings change live. Neither reads the environment. This module imports without torch.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

from .background import BackgroundConfig
from .hunyuan3d.acceleration_options import AccelerationOptions
from .hunyuan3d.config import PositionInterpolation
from .paths import resolve_path

if TYPE_CHECKING:
    from .hunyuan3d.params import GenerationParams

DEFAULT_MODEL = "configs/models/tiny-Hunyuan3D-2/hunyuan3d-dit-v2-0"
DEFAULT_VRAM_TABLE = "configs/vram_batch_table.yaml"
# One batch on the GPU plus batches in their CPU section; more than a few only holds memory.
MAX_CONCURRENT_BATCHES = 4
MAX_BATCH_SIZE = 64
# the jobs table's `model` column is String(128)
MAX_MODEL_NAME = 128

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class GeneratorConfig(BaseModel):
    """What one ShapeGenerator replica loads and how it warms up (changing it restarts replicas)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # How the app serves this model (read by the application builder, never by the replica: a change of
    # these three does not restart it)
    name: str | None = Field(
        default=None,
        max_length=MAX_MODEL_NAME,
        description="The model name jobs choose it by (`model` of a job) and capabilities list; null: the "
        "variant name (the model folder's name). Its deployment is `ShapeGenerator-<name>` (in `generators:`).",
    )
    default: bool = Field(
        default=False,
        description="In `generators:`: the model of jobs that name none (at most one entry; none: the first).",
    )
    defaults: dict[str, Any] = Field(
        default_factory=dict,
        description="Job defaults of this model over the app's `defaults` (same fields, e.g. "
        "`{num_inference_steps: 5}`); capabilities report the merged values.",
    )
    model: str = Field(
        default=DEFAULT_MODEL,
        description="Released model folder (`config.yaml` + weights), relative to the repository. With "
        "`random_weights`: a variant name (e.g. `hunyuan3d-dit-v2-0`), a `config.yaml` or a folder.",
    )
    vae: str | None = Field(
        default=None,
        description="VAE folder overriding the model folder's VAE; relative to the repository. Null: a `*-turbo` "
        "model folder uses its sibling turbo VAE folder when present, any other its own VAE.",
    )
    random_weights: bool = Field(
        default=False,
        description="Build the architecture with random weights (benchmarks, tests); `model` may then be a "
        "variant name.",
    )
    weights_seed: int = Field(default=0, description="Seed of the random weights (with `random_weights`).")
    variant: str | None = Field(
        default=None, description="Row of the VRAM batch table; defaults to the model folder or variant name."
    )
    device: str = Field(default="auto", description="auto (cuda when available), cpu, cuda or cuda:N.")
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        default="auto", description="Weights and compute precision; auto: float16 on CUDA, float32 on CPU."
    )
    torch_threads: PositiveInt | None = Field(
        default=None,
        description="torch intra-op threads; null keeps torch's (Ray pins a 1-CPU replica to one thread).",
    )
    warmup: bool = Field(
        default=True,
        description="One pass at start (first-call allocations, kernel selection), so neither the first job "
        "nor batch sizing pays for them.",
    )
    warmup_params: dict[str, Any] = Field(
        default_factory=dict,
        description="GenerationParams of the warm-up pass; also the shape that max_batch_size auto/table sizes for.",
    )
    vram_table: str = Field(
        default=DEFAULT_VRAM_TABLE,
        description="VRAM budget -> batch size table that `table` (and `auto` on CPU) sizes batches from; "
        "relative to the repository.",
    )
    background: BackgroundConfig = Field(
        default_factory=BackgroundConfig,
        description="How the replica removes the backgrounds of photos (jobs with `remove_background` auto on an "
        "image without alpha, or always).",
    )
    position_embedding_interpolation: PositionInterpolation | None = Field(
        default=None,
        description="How DINOv2 position embeddings are resized when a model conditions at another size than "
        "518 px (mini-turbo: 1022). null/`size`: as transformers >= 4.45 and 5, what the official hy3dgen 2.0.2 and "
        "hy3dshape run; `scale_factor`: as transformers < 4.45 ((S/14 + 0.1) / 37).",
    )
    acceleration: AccelerationOptions = Field(
        default_factory=AccelerationOptions,
        description="GPU speed-ups of the pipeline, each off by default; checked against the device at start.",
    )

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {value!r}")
        return value

    @field_validator("warmup_params")
    @classmethod
    def _check_warmup_params(cls, value: dict[str, Any]) -> dict[str, Any]:
        from .hunyuan3d.params import GenerationParams

        GenerationParams.from_dict(value)  # raises ValueError naming the bad field
        return value

    @model_validator(mode="after")
    def _check_vae(self) -> GeneratorConfig:
        if self.vae is not None and self.random_weights:
            raise ValueError("vae loads weights from a folder; it cannot be combined with random_weights")
        return self

    def generation_params(self) -> GenerationParams:
        from .hunyuan3d.params import GenerationParams

        return GenerationParams.from_dict(self.warmup_params)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or value != value.strip()):
            raise ValueError(f"name must be non-empty without surrounding spaces, got {value!r}")
        return value

    def model_name(self) -> str:
        """The name jobs choose this model by: ``name``, else the variant name."""
        return self.name or self.variant_name()

    def replica_config(self) -> GeneratorConfig:
        """This config without what only the builder reads, so that changing a model's job defaults or
        default flag does not restart (and reload) its replicas."""
        return self.model_copy(update={"default": False, "defaults": {}})

    def variant_name(self) -> str:
        if self.variant:
            return self.variant
        # by name only: the builder may run where the folder is not (`serve deploy` builds on the cluster)
        path = resolve_path(self.model)
        if path.suffix in (".yaml", ".yml"):  # a config.yaml: its folder names the variant
            return path.parent.name
        return path.name  # a folder, or a variant name (random weights)


class BatchingConfig(BaseModel):
    """The live batch settings (the deployment's ``user_config``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: PositiveInt | Literal["auto", "table"] = Field(
        default=4,
        description="Requests per GPU pass. 'auto': measure peak GPU memory at start (CPU: the table's cpu "
        "entry). 'table': look the budget up in the VRAM batch table.",
    )
    batch_wait_timeout_s: float = Field(
        default=0.05, ge=0.0, le=10.0, description="How long a batch waits to fill once its first request arrived."
    )
    max_concurrent_batches: int = Field(
        default=2,
        ge=1,
        le=MAX_CONCURRENT_BATCHES,
        description="Batches in flight: 1 on the GPU, the rest in surface extraction. 2 overlaps them.",
    )
    vram_budget_gib: float | None = Field(
        default=None, gt=0, description="GPU memory that `auto` and `table` size batches for; null: the whole device."
    )
    safety_margin: float = Field(
        default=0.15, ge=0.0, lt=1.0, description="`auto`: headroom over the measured peak memory (0.15 = 15 %)."
    )
    auto_max_batch_size: int = Field(
        default=16, ge=1, le=MAX_BATCH_SIZE, description="Largest batch size `auto` tries (1, 2, 4, ... up to this)."
    )
    inject_oom_above_batch_size: int | None = Field(
        default=None,
        ge=0,
        description="TEST HOOK ONLY: GPU passes larger than this raise torch.cuda.OutOfMemoryError before any "
        "work, to exercise OOM bisection without a GPU. Never set it in production configs.",
    )

    @field_validator("max_batch_size")
    @classmethod
    def _cap_batch_size(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value > MAX_BATCH_SIZE:
            raise ValueError(f"max_batch_size must be at most {MAX_BATCH_SIZE}, got {value}")
        return value
