"""The batch-first Hunyuan3D-2 shape pipeline: images -> conditioning -> latents -> volumes -> meshes.

One call handles B images: ONE conditioner pass, ONE DiT pass per step (2B rows under CFG), ONE VAE pass,
batched volume decoding, then marching cubes per sample. Each sample owns its randomness (a CPU
``torch.Generator`` seeded per job), so a job's mesh does not depend on its batch-mates or the device.

The accelerator section (:meth:`ShapePipeline.generate_volumes`, on preprocessed pixels) and the CPU
section (:meth:`ShapePipeline.extract_surfaces`) are separate calls, so a server can preprocess each image
once when it checks it, and overlap one batch's marching cubes with the next batch's GPU work.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import trimesh
from diffusers import FlowMatchEulerDiscreteScheduler
from PIL import Image
from torch import Tensor

from .acceleration import AccelerationOptions, DiTStep, compile_module, dit_step, sdpa_context
from .checkpoint import COMPONENTS, convert_checkpoint, find_weight_file, iter_checkpoint, load_strict, read_checkpoint
from .conditioner import ImageConditioner
from .config import DiTConfig, PositionInterpolation, SchedulerConfig, ShapeModelConfig, named_config
from .device_marching_cubes import marching_cubes_on_device
from .dit import Hunyuan3DDiT
from .dit_v21 import HunYuanDiTPlain
from .image_processing import ImageProcessor
from .meta_init import check_materialised, parameters_on_meta
from .multiview import (
    MultiviewConditioner,
    MultiviewImageProcessor,
    Pixels,
    ViewPixels,
    batch_size_of,
    build_conditioner,
)
from .params import GenerationParams
from .point_decoding import BatchGeometryDecoder, adaptive_kv_count
from .surface import SurfaceInput, extract_surfaces
from .vae import ShapeVAEDecoder
from .vae_folders import VAESource, resolve_vae
from .volume import SparseVolume, decode_dense, decode_hierarchical

# how from_pretrained builds the modules (see there)
InitMode = Literal["meta", "eager"]
# Both DiT generations share the sampler contract: embed_condition(tokens) and
# forward(latents, t, cond, guidance, *, cond_copies=..., cond_embedded=...)
ShapeDiT = Hunyuan3DDiT | HunYuanDiTPlain

STAGES = ("preprocess", "conditioner", "diffusion", "vae", "volume_decoding", "surface_extraction")


class StageTimings:
    """Wall-clock seconds per pipeline stage (accumulated); synchronises CUDA so GPU time is real.

    ``on_stage(name)`` is called as each stage starts (progress display, e.g. `orfeas generate` on a terminal).
    """

    def __init__(self, on_stage: Callable[[str], None] | None = None) -> None:
        self.seconds: dict[str, float] = {}
        self.on_stage = on_stage

    @contextmanager
    def stage(self, name: str, device: torch.device | None = None) -> Iterator[None]:
        if self.on_stage is not None:
            self.on_stage(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            if device is not None and device.type == "cuda":
                torch.cuda.synchronize(device)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def flow_sigmas(scheduler: SchedulerConfig, num_inference_steps: int) -> np.ndarray:
    """Flow times for each step, 0 = noise .. 1 = data (Hunyuan3D runs the flow 'forwards')."""
    if scheduler.kind == "flow_match_euler":
        return np.linspace(0, 1, num_inference_steps)
    # turbo: the consistency-distilled grid (PCM) the model was trained on, sampled at `steps` points
    train = scheduler.num_train_timesteps
    ratio = train // scheduler.pcm_timesteps
    euler_steps = np.concatenate([[0], (np.arange(1, scheduler.pcm_timesteps) * ratio).round().astype(np.int64) - 1])
    grid = np.linspace(0, 1, train)[euler_steps]
    picks = np.floor(np.linspace(0, scheduler.pcm_timesteps, num_inference_steps, endpoint=False)).astype(np.int64)
    return grid[picks]


def make_scheduler(scheduler: SchedulerConfig, num_inference_steps: int, device: torch.device) -> Any:
    """A fresh diffusers scheduler per call (it is stateful), set to Hunyuan3D's forward-running flow.

    diffusers runs sigmas from 1 (noise) down to 0; ``invert_sigmas`` flips them back and ends the schedule at
    1.0, so the last Euler update is zero as in the official sampler.
    """
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=scheduler.num_train_timesteps, invert_sigmas=True)
    sigmas = flow_sigmas(scheduler, num_inference_steps)
    # diffusers builds its scheduler classes through decorators the type checker cannot follow
    sched.set_timesteps(sigmas=(1.0 - sigmas).tolist(), device=device)  # type: ignore[attr-defined]
    return sched


def steps_that_move(scheduler: Any) -> int:
    """How many leading steps of ``scheduler`` change the latents.

    Trailing steps with ``sigma_next == sigma`` are Euler updates of length zero (the official 50-step schedule
    ends with one: linspace(0, 1) reaches 1.0 and the terminal sigma is 1.0 too): skipping them saves a full
    DiT pass each and leaves the latents bit-identical.
    """
    sigmas = scheduler.sigmas
    steps = len(scheduler.timesteps)
    while steps > 0 and bool(sigmas[steps] == sigmas[steps - 1]):
        steps -= 1
    return steps


class ShapePipeline:
    def __init__(
        self,
        config: ShapeModelConfig,
        dit: ShapeDiT,
        vae: ShapeVAEDecoder,
        conditioner: ImageConditioner,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        acceleration: AccelerationOptions | None = None,
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        self.dtype = dtype
        self.acceleration = acceleration or AccelerationOptions()
        self.acceleration.validate_for(self.device)  # a replica refuses to start, naming the option
        self.image_processor = ImageProcessor(config.image_processor)
        self.view_processor = MultiviewImageProcessor(config.image_processor)
        self.dit = dit.to(self.device, dtype).eval()
        compile_module(self.dit, self.acceleration, "dit")  # in place: same module, same state_dict keys
        self.vae = vae.to(self.device, dtype).eval()
        compile_module(self.vae.geo_decoder, self.acceleration, "decoder")
        self.conditioner = conditioner.to(self.device, dtype).eval()
        # what the sampler calls per step: the DiT, or its CUDA-graph replay
        self.dit_step: DiTStep = dit_step(self.dit, self.acceleration, self.device)

    # --- construction -----------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        acceleration: AccelerationOptions | None = None,
        vae: str | Path | None = None,
        init: InitMode = "meta",
        position_interpolation: PositionInterpolation | None = None,
    ) -> ShapePipeline:
        """Load a released model folder (``config.yaml`` + weights) strictly.

        ``dtype`` defaults to fp16 on CUDA and fp32 on CPU (CPU fp16 matmuls are slow and inexact). ``vae``: a
        VAE folder (or another model folder) whose VAE replaces the folder's own; without it a ``*-turbo``
        folder decodes with its sibling turbo VAE folder when present (see :mod:`.vae_folders`).
        ``init="meta"`` builds the modules without weights and makes each checkpoint tensor, cast to ``dtype``
        on ``device`` as it is read, a parameter: no fp32 host copy of the model. ``"eager"`` is the plain
        path (fp32 modules on the host, whole file read, then copied and cast), kept as the reference the
        meta path is tested and measured against. ``position_interpolation``: how DINOv2 position embeddings are
        resized at an encoder size other than 518 px (see :data:`~.config.PositionInterpolation`; None: "size").
        """
        folder = Path(path)
        if not (folder / "config.yaml").is_file():
            raise FileNotFoundError(f"{folder}: not a model folder (no config.yaml)")
        config = _with_interpolation(ShapeModelConfig.from_yaml(folder / "config.yaml"), position_interpolation)
        vae_source = resolve_vae(folder, config, Path(vae) if vae is not None else None)
        config = replace(config, vae=vae_source.config)
        dtype = dtype or _default_dtype(device)
        target = torch.device(device)
        model_file = find_weight_file(folder)
        # the model file's own vae.* keys are read only when that VAE is the one used
        own_vae = vae_source.weight_file == model_file and vae_source.layout == "pipeline"
        components = COMPONENTS if own_vae else ("model", "conditioner")
        if init == "eager":
            dit, vae_module, conditioner = _build_modules(config)
            weights = convert_checkpoint(read_checkpoint(model_file, components=components), dit=config.dit)
            if not own_vae:
                weights["vae"] = _read_vae_weights(vae_source)
            assign = False
        else:
            with parameters_on_meta():
                dit, vae_module, conditioner = _build_modules(config)
            weights = convert_checkpoint(iter_checkpoint(model_file, components=components), dtype, target, config.dit)
            if not own_vae:
                weights["vae"] = _read_vae_weights(vae_source, dtype, target)
            assign = True
        for module, component, what in (
            (dit, "model", "DiT"),
            (vae_module, "vae", "VAE"),
            (conditioner, "conditioner", "conditioner"),
        ):
            source = vae_source.folder.name if component == "vae" else folder.name
            load_strict(module, weights.pop(component), f"{source}: {what}", assign=assign)
            check_materialised(module, f"{source}: {what}")
        return cls(config, dit, vae_module, conditioner, target, dtype, acceleration)

    @classmethod
    def from_config(
        cls,
        config: ShapeModelConfig | str | Path | dict[str, Any],
        seed: int = 0,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        acceleration: AccelerationOptions | None = None,
        position_interpolation: PositionInterpolation | None = None,
    ) -> ShapePipeline:
        """Any architecture with random weights (for benchmarks of the real-size model without weights).

        ``config`` is a :class:`ShapeModelConfig`, a released-style dict, a ``config.yaml`` path or a model
        folder, or a variant name such as ``hunyuan3d-dit-v2-0``.
        """
        if isinstance(config, dict):
            config = ShapeModelConfig.from_dict(config)
        elif isinstance(config, (str, Path)):
            path = Path(config)
            if path.is_dir():
                path = path / "config.yaml"
            config = ShapeModelConfig.from_yaml(path) if path.is_file() else named_config(str(config))
        config = _with_interpolation(config, position_interpolation)
        device = torch.device(device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            with device:  # initialise where the model will run: minutes faster for real sizes on a GPU
                dit, vae, conditioner = _build_modules(config)
        return cls(config, dit, vae, conditioner, device, dtype or _default_dtype(device), acceleration)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def view_names(self) -> tuple[str, ...]:
        """The named views this model takes, front first (only ``front`` for single-image models)."""
        return self.config.view_names

    # --- stages -----------------------------------------------------------------------------------------

    def preprocess(self, images: Sequence[Image.Image]) -> Tensor:
        """(B, 3, S, S) in [-1, 1] on CPU. Raises ``EmptyImageError`` (a ValueError) naming the bad image."""
        tensors = []
        for index, image in enumerate(images):
            try:
                tensors.append(self.image_processor(image))
            except ValueError as exc:
                raise type(exc)(f"image {index}: {exc}") from exc
        return torch.cat(tensors, dim=0)

    def preprocess_views(self, jobs: Sequence[Mapping[str, Image.Image]]) -> ViewPixels:
        """B jobs' {view name: image} -> :class:`ViewPixels` (B, V, 3, S, S) on CPU, views in model order.

        Every job of one call must name the same views (one condition length per call). Raises ``ValueError``
        naming the job: an unknown or missing front view, a view this model does not take, or an empty image.
        """
        parts = []
        for index, views in enumerate(jobs):
            unsupported = [name for name in views if name not in self.view_names]
            if unsupported:
                takes = "only the front view" if len(self.view_names) == 1 else f"the views {list(self.view_names)}"
                raise ValueError(f"job {index}: model {self.name} takes {takes}; got {unsupported}")
            try:
                parts.append(self.view_processor(views))
            except ValueError as exc:
                raise type(exc)(f"job {index}: {exc}") from exc
        return ViewPixels.cat(parts)

    def initial_noise(self, seeds: Sequence[int]) -> Tensor:
        """(B, N, C) float32 on CPU: sample i is drawn alone from ``Generator().manual_seed(seeds[i])``."""
        shape = (1, self.config.vae.num_latents, self.config.vae.embed_dim)
        return torch.cat(
            [
                torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(s)), dtype=torch.float32)
                for s in seeds
            ]
        )

    def sample_latents(
        self,
        images: Sequence[Image.Image] | Sequence[Mapping[str, Image.Image]],
        seeds: Sequence[int],
        params: GenerationParams,
        timings: StageTimings | None = None,
    ) -> Tensor:
        """Preprocess ``images`` (or jobs' view dicts) and :meth:`sample` them: (B, N, C) latents before the VAE
        (model dtype)."""
        _check_counts(len(images), len(seeds))
        timings = timings or StageTimings()
        with timings.stage("preprocess"):
            pixels = self._preprocess_any(images)
        return self.sample(pixels, seeds, params, timings)

    def _preprocess_any(self, images: Sequence[Image.Image] | Sequence[Mapping[str, Image.Image]]) -> Pixels:
        if images and isinstance(images[0], Mapping):
            return self.preprocess_views(images)  # type: ignore[arg-type]
        return self.preprocess(images)  # type: ignore[arg-type]

    @torch.inference_mode()
    def sample(
        self,
        pixels: Pixels,
        seeds: Sequence[int],
        params: GenerationParams,
        timings: StageTimings | None = None,
    ) -> Tensor:
        """Flow-matching sampling for the whole batch of preprocessed ``pixels`` (B, 3, S, S), or the
        :class:`ViewPixels` of B jobs -> (B, N, C)."""
        _check_counts(batch_size_of(pixels), len(seeds))
        with sdpa_context(self.acceleration):
            return self._sample(pixels.to(self.device, self.dtype), seeds, params, timings or StageTimings())

    def _condition(self, pixels: Pixels) -> Tensor:
        """(B, T, C) image tokens; a multiview model makes V x T, view by view in model order."""
        if isinstance(self.conditioner, MultiviewConditioner):
            # a single image is a job with only the front view
            views = pixels if isinstance(pixels, ViewPixels) else ViewPixels(pixels[:, None], self.view_names[:1])
            return self.conditioner(views.pixels, views.view_indices)
        if isinstance(pixels, ViewPixels):
            if pixels.views != self.view_names:
                raise ValueError(f"model {self.name} takes only the front view; got the views {list(pixels.views)}")
            pixels = pixels.pixels[:, 0]
        return self.conditioner(pixels)

    def _sample(self, pixels: Pixels, seeds: Sequence[int], params: GenerationParams, timings: StageTimings) -> Tensor:
        batch = len(seeds)

        # 1. condition: ONE encoder pass -> (B, T, C) (multiview: T = V x 1370). CFG's unconditional context
        #    is T copies of one zero token (multiview too: upstream adds no view embedding to it): it runs as
        #    that one token standing for T (exact; see Hunyuan3DDiT.forward)
        with timings.stage("conditioner", self.device):
            # embedded once: the DiT's condition projection is the same at every step
            cond_tokens = self._condition(pixels)
            cond = self.dit.embed_condition(cond_tokens)
            uncond = None
            if self.config.uses_cfg:
                uncond = self.dit.embed_condition(self.conditioner.unconditional(batch)[:, :1])

        # 2. flow matching: ONE DiT call per step for the whole batch
        with timings.stage("diffusion", self.device):
            scheduler = make_scheduler(self.config.scheduler, params.num_inference_steps, self.device)
            latents = self.initial_noise(seeds).to(self.device, self.dtype)
            # t and guidance stay float32 under fp16/bf16: the DiT embeds them in float32 (see timestep_embedding)
            guidance = None
            if not self.config.uses_cfg:
                guidance = torch.full((batch,), params.guidance_scale, device=self.device, dtype=torch.float32)
            train_steps = self.config.scheduler.num_train_timesteps
            for t in scheduler.timesteps[: steps_that_move(scheduler)]:
                t_model = t.expand(batch).float() / train_steps
                velocity = self.dit_step(latents, t_model, cond, guidance, cond_embedded=True)
                if uncond is not None:
                    # two DiT calls of B rows: the unconditional one has T - 1 fewer tokens than the other
                    v_uncond = self.dit_step(
                        latents, t_model, uncond, None, cond_copies=cond.shape[1], cond_embedded=True
                    )
                    velocity = v_uncond + params.guidance_scale * (velocity - v_uncond)
                latents = scheduler.step(velocity, t, latents).prev_sample  # Euler step in fp32
        return latents

    @torch.inference_mode()
    def decode_volumes(
        self, latents: Tensor, params: GenerationParams, timings: StageTimings | None = None
    ) -> list[SparseVolume]:
        """(B, N, C) latents -> B occupancy volumes on CPU (only the decoded band and the level below it
        leave the device)."""
        timings = timings or StageTimings()
        with timings.stage("vae", self.device):
            # latents were trained scaled by scale_factor; the official code multiplies by the reciprocal
            tokens = self.vae(latents.to(self.device, self.dtype) * (1.0 / self.config.vae.scale_factor))
            kv = self.vae.geo_decoder.prepare_kv(tokens)

        with timings.stage("volume_decoding", self.device), sdpa_context(self.acceleration):
            kv_count = adaptive_kv_count(kv.keys.shape[2]) if params.volume_decoder == "adaptive" else None
            decoder = BatchGeometryDecoder(self.vae.geo_decoder, kv, self.dtype, params.num_chunks, kv_count)
            r = params.octree_resolution
            if params.volume_decoder == "dense":
                volumes = decode_dense(decoder, r, params.box_v, params.num_chunks, self.device)
            else:
                volumes = decode_hierarchical(decoder, r, params.box_v, params.num_chunks, params.mc_level, self.device)
            if not self.acceleration.device_marching_cubes:
                volumes = [volume.cpu() for volume in volumes]
        return volumes

    def extract_surfaces(
        self,
        grids: Sequence[SurfaceInput],
        params: GenerationParams,
        timings: StageTimings | None = None,
        return_exceptions: bool = False,
    ) -> list[trimesh.Trimesh | Exception]:
        """Marching cubes per sample (CPU). With ``return_exceptions`` a failed sample's slot holds its error."""
        timings = timings or StageTimings()
        marching_cubes = marching_cubes_on_device if self.acceleration.device_marching_cubes else None
        with timings.stage("surface_extraction"):
            return extract_surfaces(
                grids,
                params.mc_level,
                params.box_v,
                params.octree_resolution,
                return_exceptions,
                marching_cubes=marching_cubes,
            )

    def generate_volumes(
        self,
        pixels: Pixels,
        seeds: Sequence[int],
        params: GenerationParams,
        timings: StageTimings | None = None,
    ) -> list[SparseVolume]:
        """The accelerator section: condition, sample and decode volumes of preprocessed ``pixels`` (single
        images, or :class:`ViewPixels` of one view set)."""
        latents = self.sample(pixels, seeds, params, timings)
        return self.decode_volumes(latents, params, timings)

    def generate_shape_batch(
        self,
        images: Sequence[Image.Image] | Sequence[Mapping[str, Image.Image]],
        seeds: Sequence[int],
        params: GenerationParams | None = None,
        timings: StageTimings | None = None,
        return_exceptions: bool = False,
    ) -> list[trimesh.Trimesh]:
        """B images (or B jobs' {view name: image}, one view set) -> B meshes through one batched pass."""
        params = params or GenerationParams()
        _check_counts(len(images), len(seeds))
        timings = timings or StageTimings()
        with timings.stage("preprocess"):
            pixels = self._preprocess_any(images)
        grids = self.generate_volumes(pixels, seeds, params, timings)
        return self.extract_surfaces(grids, params, timings, return_exceptions)  # type: ignore[return-value]


def _check_counts(images: int, seeds: int) -> None:
    if images != seeds:
        raise ValueError(f"got {images} images but {seeds} seeds; give one seed per image")
    if not images:
        raise ValueError("no images given")


def _read_vae_weights(
    source: VAESource, dtype: torch.dtype | None = None, device: torch.device | None = None
) -> dict[str, Tensor]:
    """The VAE state dict (our names) from a VAE folder's file or another model folder's ``vae.`` keys."""
    items = iter_checkpoint(source.weight_file, source.layout, components=("vae",))
    return convert_checkpoint(items, dtype, device)["vae"]


def _build_modules(config: ShapeModelConfig) -> tuple[ShapeDiT, ShapeVAEDecoder, ImageConditioner]:
    # the DiT generation follows the config's type (its target class in config.yaml)
    dit = Hunyuan3DDiT(config.dit) if isinstance(config.dit, DiTConfig) else HunYuanDiTPlain(config.dit)
    return dit, ShapeVAEDecoder(config.vae), build_conditioner(config.conditioner)


def _with_interpolation(config: ShapeModelConfig, interpolation: PositionInterpolation | None) -> ShapeModelConfig:
    if interpolation is None or interpolation == config.conditioner.position_interpolation:
        return config
    return replace(config, conditioner=replace(config.conditioner, position_interpolation=interpolation))


def _default_dtype(device: str | torch.device) -> torch.dtype:
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32
