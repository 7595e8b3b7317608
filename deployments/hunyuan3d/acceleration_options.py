"""Which GPU speed-ups the shape pipeline uses (``args.generator.acceleration``): the options and their
checks, importable without torch so that configs validate anywhere. What each option does is in
``acceleration.py``; every one is off by default, and the defaults change nothing.
"""

from __future__ import annotations

from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# torch.compile's modes (torch._inductor.list_mode_options(); a test keeps this list in step with torch)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
# inductor modes that record CUDA graphs of their own: with cuda_graphs the same work would be captured twice
GRAPHING_MODES = ("reduce-overhead", "max-autotune")
# names of torch.nn.attention.SDPBackend members (acceleration.SDPA_BACKENDS maps them)
SDPA_BACKEND_NAMES = ("math", "flash", "efficient", "cudnn")
# torch has CPU kernels for these two only; the others fail at the first attention call on a CPU
CPU_SDPA_BACKENDS = ("math", "flash")


class _Device(Protocol):
    @property
    def type(self) -> str: ...


class AccelerationOptions(BaseModel):
    """GPU speed-ups of the shape pipeline, each off by default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    compile_dit: bool = Field(default=False, description="torch.compile the DiT (in place; minutes at warm-up).")
    compile_decoder: bool = Field(default=False, description="torch.compile the geometry decoder.")
    compile_mode: CompileMode = Field(
        default="default", description="torch.compile mode; only with compile_dit or compile_decoder."
    )
    cuda_graphs: bool = Field(
        default=False, description="Replay the DiT step from one captured CUDA graph per input shape (CUDA only)."
    )
    sdpa_backends: tuple[str, ...] = Field(
        default=(),
        description="Restrict attention to these backends (math, flash, efficient, cudnn); empty: torch picks.",
    )
    device_marching_cubes: bool = Field(
        default=False,
        description="Marching cubes on the GPU with NVIDIA Warp (pip install 'warp-lang>=1.19'; CUDA only).",
    )

    @field_validator("sdpa_backends")
    @classmethod
    def _known_backends(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [name for name in value if name not in SDPA_BACKEND_NAMES]
        if unknown:
            raise ValueError(f"sdpa_backends: unknown {unknown}; choose from {', '.join(SDPA_BACKEND_NAMES)}")
        if len(set(value)) != len(value):
            raise ValueError(f"sdpa_backends lists a backend twice: {value}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> AccelerationOptions:
        if self.compile_mode != "default" and not (self.compile_dit or self.compile_decoder):
            raise ValueError(
                f"compile_mode {self.compile_mode!r} has no effect: set compile_dit or compile_decoder, "
                "or leave compile_mode at 'default'"
            )
        if self.cuda_graphs and self.compile_dit and self.compile_mode in GRAPHING_MODES:
            raise ValueError(
                f"cuda_graphs with compile_mode {self.compile_mode!r}: that mode records CUDA graphs itself; "
                "use compile_mode 'default' or 'max-autotune-no-cudagraphs' with cuda_graphs"
            )
        return self

    def validate_for(self, device: _Device) -> None:
        """Raise ``ValueError`` naming the first option that cannot work on ``device`` (a torch.device)."""
        if device.type != "cuda":
            if self.cuda_graphs:
                raise ValueError(f"cuda_graphs needs a CUDA device; the pipeline runs on {device}: turn it off")
            if self.device_marching_cubes:
                raise ValueError(
                    f"device_marching_cubes needs a CUDA device; the pipeline runs on {device}: turn it off "
                    "(the CPU path uses scikit-image)"
                )
            gpu_only = [name for name in self.sdpa_backends if name not in CPU_SDPA_BACKENDS]
            if gpu_only:
                raise ValueError(
                    f"sdpa_backends {gpu_only} have no kernels on {device}; use {' or '.join(CPU_SDPA_BACKENDS)}"
                )
        if self.device_marching_cubes:
            from .device_marching_cubes import warp_problem

            problem = warp_problem()
            if problem is not None:
                raise ValueError(f"device_marching_cubes: {problem}")
