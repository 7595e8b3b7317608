"""GPU speed-ups for the shape pipeline, each off by default and each checked before it is used.

- ``compile_dit`` / ``compile_decoder``: ``torch.compile`` of the DiT and of the geometry decoder (the two hot
  loops: one DiT pass per step, one decoder pass per chunk of query points), in place, so the modules keep
  their type and state_dict keys.
- ``cuda_graphs``: one captured ``torch.cuda.CUDAGraph`` per input shape of the DiT step, replayed on later
  calls (:class:`CudaGraphStep`). It removes the launch overhead of ~50 blocks x dozens of kernels per step,
  which dominates at small batches and few (turbo) steps.
- ``sdpa_backends``: restrict ``scaled_dot_product_attention`` to the named backends (:func:`sdpa_context`).
- ``device_marching_cubes``: surface extraction on the GPU (``device_marching_cubes.py``).

Why explicit capture rather than ``compile_mode="reduce-overhead"`` for CUDA graphs: it works on the eager
DiT too (no minutes of compilation of a 1.1B model at replica start), the shape key is ours and visible
((batch, tokens) and the static arguments), the number of graphs is bounded, and the output is copied out
before it is returned, whereas cudagraph trees overwrite their outputs on the next replay. The two are not
combined: inductor modes that record graphs themselves are refused together with ``cuda_graphs``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .acceleration_options import SDPA_BACKEND_NAMES, AccelerationOptions

__all__ = ["SDPA_BACKENDS", "AccelerationOptions", "CudaGraphStep", "compile_module", "dit_step", "sdpa_context"]

SDPA_BACKENDS: dict[str, SDPBackend] = {
    "math": SDPBackend.MATH,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}
if tuple(SDPA_BACKENDS) != SDPA_BACKEND_NAMES:  # one list of names, checked where torch is at hand
    raise ImportError(f"SDPA backend names out of step: {tuple(SDPA_BACKENDS)} vs {SDPA_BACKEND_NAMES}")

CompiledPart = Literal["dit", "decoder"]


def compile_module(module: nn.Module, options: AccelerationOptions, part: CompiledPart) -> nn.Module:
    """``module`` compiled in place when ``options`` asks for ``part``, else untouched; returns ``module``.

    In place (``nn.Module.compile``) so the pipeline keeps a ``Hunyuan3DDiT`` / ``GeometryDecoder`` with the
    same attributes and state_dict keys (``torch.compile(module)`` would wrap it and prefix the keys with
    ``_orig_mod.``). Compilation happens at the first call and again when shapes change (until torch marks
    them dynamic), so call it after the module has its final device and dtype, and warm up before serving.
    """
    enabled = options.compile_dit if part == "dit" else options.compile_decoder
    if enabled:
        module.compile(mode=options.compile_mode)
    return module


def sdpa_context(options: AccelerationOptions) -> contextlib.AbstractContextManager[Any]:
    """A context that restricts SDPA to ``options.sdpa_backends`` (torch's own choice when empty).

    The backend flags are process-wide, not per thread: enter it around a whole GPU pass, which the
    engine's GPU lock already runs one at a time.
    """
    if not options.sdpa_backends:
        return contextlib.nullcontext()
    return sdpa_kernel([SDPA_BACKENDS[name] for name in options.sdpa_backends])


DiTStep = Callable[..., Tensor]


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: tuple[Tensor | None, ...]  # static buffers the graph reads; new inputs are copied into them
    output: Tensor  # the buffer the graph writes


@dataclass
class CudaGraphStep:
    """``step(latents, t, cond, guidance, **static) -> velocity`` replayed from one CUDA graph per shape.

    The first call with a new key (the shape, dtype and device of every tensor, which of them are None, and
    the ``static`` keyword values such as ``cond_copies``) warms the step up on a side stream, captures it and
    replays it; later calls with that key copy their inputs into the captured buffers and replay. Beyond
    ``max_graphs`` keys (each holds its own activation memory) new shapes run eagerly and are counted in
    ``eager_calls``. Always runs under ``torch.inference_mode`` (graphs record no autograd).
    """

    step: DiTStep
    device: torch.device
    max_graphs: int = 8
    warmup_calls: int = 2
    eager_calls: int = 0
    _graphs: dict[tuple[Any, ...], _Captured] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)
        if self.device.type != "cuda":
            raise ValueError(f"cuda_graphs needs a CUDA device, got {self.device}; turn cuda_graphs off")
        if self.max_graphs < 1 or self.warmup_calls < 1:
            raise ValueError(f"max_graphs and warmup_calls must be >= 1, got {self.max_graphs}, {self.warmup_calls}")

    @property
    def captured_keys(self) -> list[tuple[Any, ...]]:
        return list(self._graphs)

    @torch.inference_mode()
    def __call__(
        self, latents: Tensor, t: Tensor, cond: Tensor, guidance: Tensor | None = None, **static: Any
    ) -> Tensor:
        inputs = (latents, t, cond, guidance)
        key = (tuple(self._describe(x) for x in inputs), tuple(sorted(static.items())))
        captured = self._graphs.get(key)
        if captured is None:
            if len(self._graphs) >= self.max_graphs:
                self.eager_calls += 1
                return self.step(*inputs, **static)
            captured = self._graphs[key] = self._capture(inputs, static)
        for buffer, value in zip(captured.inputs, inputs, strict=True):
            if buffer is not None and value is not None:  # the key holds which inputs are None
                buffer.copy_(value)
        captured.graph.replay()
        # the next replay overwrites the buffer: hand out a copy ((B, N, C) latents are small)
        return captured.output.clone()

    def _describe(self, x: Tensor | None) -> tuple[Any, ...] | None:
        if x is None:
            return None
        if x.device.type != "cuda":
            raise ValueError(f"cuda_graphs: step inputs must be on {self.device}, got a tensor on {x.device}")
        return (tuple(x.shape), x.dtype, x.device)

    def _capture(self, inputs: tuple[Tensor | None, ...], static: dict[str, Any]) -> _Captured:
        buffers = tuple(None if x is None else x.clone() for x in inputs)
        # 1. warm up on a side stream (cuBLAS workspaces, lazy inits and autotuning must not be captured)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup_calls):
                self.step(*buffers, **static)
        torch.cuda.current_stream(self.device).wait_stream(side)
        # 2. capture; "thread_local": the engine's CPU section may run CUDA work (device marching cubes,
        #    memory queries) in another thread meanwhile, which "global" would turn into a capture error
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            output = self.step(*buffers, **static)
        return _Captured(graph, buffers, output)


def dit_step(dit: nn.Module, options: AccelerationOptions, device: torch.device) -> DiTStep:
    """What the sampler calls each step: the DiT itself, or its :class:`CudaGraphStep` with ``cuda_graphs``."""
    return CudaGraphStep(dit, device) if options.cuda_graphs else dit
