"""Typed configuration of a Hunyuan3D-2 shape model, read from a released ``config.yaml``.

The released folders name their classes with ``hy3dgen.shapegen...`` targets. We map each target to a
section of :class:`ShapeModelConfig` by its final class name and never import hy3dgen. This module
imports without torch so that configs can be inspected (and validated) anywhere.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

SchedulerKind = Literal["flow_match_euler", "consistency_flow_match_euler"]
# The official MVImageProcessorV2 knows four views (front, left, back, right: indices 0-3).
MAX_VIEWS = 4


class UnsupportedModelError(ValueError):
    """The config names a model family or class this project does not implement."""


@dataclass(frozen=True)
class DiTConfig:
    """Flux-style flow-matching transformer (``Hunyuan3DDiT``)."""

    in_channels: int = 64
    context_in_dim: int = 1536
    hidden_size: int = 1024
    mlp_ratio: float = 4.0
    num_heads: int = 16
    depth: int = 16
    depth_single_blocks: int = 32
    axes_dim: tuple[int, ...] = (64,)
    theta: int = 10_000
    qkv_bias: bool = True
    time_factor: float = 1000.0
    guidance_embed: bool = False

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}")
        if sum(self.axes_dim) != self.head_dim:
            raise ValueError(f"axes_dim {list(self.axes_dim)} must sum to the head dim {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden_dim(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)


@dataclass(frozen=True)
class VAEConfig:
    """The decoder half of ``ShapeVAE``: latents -> token set -> occupancy at query points."""

    num_latents: int = 3072
    embed_dim: int = 64
    width: int = 1024
    heads: int = 16
    num_decoder_layers: int = 16
    geo_decoder_downsample_ratio: int = 1
    geo_decoder_mlp_expand_ratio: int = 4
    geo_decoder_ln_post: bool = True
    num_freqs: int = 8
    include_pi: bool = True
    qkv_bias: bool = True
    qk_norm: bool = False
    scale_factor: float = 1.0

    @property
    def geo_width(self) -> int:
        return self.width // self.geo_decoder_downsample_ratio

    @property
    def geo_heads(self) -> int:
        return self.heads // self.geo_decoder_downsample_ratio

    @property
    def fourier_dim(self) -> int:
        # x, sin and cos of each frequency, for the 3 coordinates
        return 3 * (2 * self.num_freqs + 1)


@dataclass(frozen=True)
class ConditionerConfig:
    """DINOv2 image encoder; ``dinov2`` is the inline ``Dinov2Config`` dict of the release.

    ``view_num``: ``None`` for the single-image ``DinoImageEncoder``; for the multiview ``DinoImageEncoderMV``
    (Hunyuan3D-2mv) the number of view embeddings it holds (views 0 .. view_num - 1, front first).
    """

    dinov2: dict[str, Any] = field(default_factory=dict)
    image_size: int = 518
    use_cls_token: bool = True
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    view_num: int | None = None

    def __post_init__(self) -> None:
        if self.view_num is not None and not 1 <= self.view_num <= MAX_VIEWS:
            raise ValueError(f"view_num must be between 1 and {MAX_VIEWS}, got {self.view_num}")
        if self.view_num is not None and not self.use_cls_token:
            # the official multiview encoder always keeps CLS but sizes its tokens without it: it cannot run
            raise UnsupportedModelError("DinoImageEncoderMV with use_cls_token false does not run upstream either")

    @property
    def multiview(self) -> bool:
        return self.view_num is not None

    @property
    def hidden_size(self) -> int:
        return int(self.dinov2.get("hidden_size", 768))

    @property
    def num_tokens(self) -> int:
        """Tokens per view (a multiview condition has this many per view it was given)."""
        patch = int(self.dinov2.get("patch_size", 14))
        return (self.image_size // patch) ** 2 + (1 if self.use_cls_token else 0)


@dataclass(frozen=True)
class SchedulerConfig:
    kind: SchedulerKind = "flow_match_euler"
    num_train_timesteps: int = 1000
    pcm_timesteps: int = 50  # consistency (turbo) variant only


@dataclass(frozen=True)
class ImageProcessorConfig:
    """``multiview``: ``MVImageProcessorV2`` (each named view processed like one image, views in model order)."""

    size: int = 512
    border_ratio: float = 0.15
    multiview: bool = False


@dataclass(frozen=True)
class ShapeModelConfig:
    dit: DiTConfig = field(default_factory=DiTConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    conditioner: ConditionerConfig = field(default_factory=ConditionerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    image_processor: ImageProcessorConfig = field(default_factory=ImageProcessorConfig)
    name: str = "custom"

    def __post_init__(self) -> None:
        if self.dit.in_channels != self.vae.embed_dim:
            raise ValueError(
                f"DiT in_channels ({self.dit.in_channels}) must equal the VAE embed_dim ({self.vae.embed_dim})"
            )
        if self.dit.context_in_dim != self.conditioner.hidden_size:
            raise ValueError(
                f"DiT context_in_dim ({self.dit.context_in_dim}) must equal the image encoder width "
                f"({self.conditioner.hidden_size})"
            )
        if self.conditioner.multiview != self.image_processor.multiview:
            raise ValueError(
                "DinoImageEncoderMV and MVImageProcessorV2 go together (a multiview model needs both, "
                "a single-image model neither)"
            )

    @property
    def view_names(self) -> tuple[str, ...]:
        """The named views a job may send this model (``deployments.contract.VIEW_NAMES`` order, front first).

        Single-image models take the front view only; a multiview model the first ``view_num`` of the four.
        """
        from deployments.contract import FRONT_VIEW, VIEW_NAMES  # here: the contract module imports this package

        if self.conditioner.view_num is None:
            return (FRONT_VIEW,)
        return VIEW_NAMES[: self.conditioner.view_num]

    @property
    def uses_cfg(self) -> bool:
        """Guidance-distilled ("fast") models take guidance through an embedding instead of CFG."""
        return not self.dit.guidance_embed

    @classmethod
    def from_yaml(cls, path: str | Path) -> ShapeModelConfig:
        import yaml  # a server dependency: the light (agent) install imports this module without it

        path = Path(path)
        with path.open() as f:
            raw = yaml.safe_load(f)
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a mapping with model/vae/conditioner sections")
        return cls.from_dict(raw, name=path.parent.name)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], name: str = "custom") -> ShapeModelConfig:
        """Parse a released config dict (sections with ``target`` + ``params``)."""
        for section in ("model", "vae", "conditioner"):
            if section not in raw:
                raise ValueError(f"model config is missing the {section!r} section")
        return cls(
            dit=_parse_dit(raw["model"]),
            vae=_parse_vae(raw["vae"]),
            conditioner=_parse_conditioner(raw["conditioner"]),
            scheduler=_parse_scheduler(raw.get("scheduler")),
            image_processor=_parse_image_processor(raw.get("image_processor")),
            name=name,
        )

    def to_dict(self) -> dict[str, Any]:
        """A released-style config dict (round-trips through :meth:`from_dict`)."""
        scheduler_target = {
            "flow_match_euler": "FlowMatchEulerDiscreteScheduler",
            "consistency_flow_match_euler": "ConsistencyFlowMatchEulerDiscreteScheduler",
        }[self.scheduler.kind]
        scheduler_params: dict[str, Any] = {"num_train_timesteps": self.scheduler.num_train_timesteps}
        if self.scheduler.kind == "consistency_flow_match_euler":
            scheduler_params["pcm_timesteps"] = self.scheduler.pcm_timesteps
        dit = asdict(self.dit)
        dit["axes_dim"] = list(self.dit.axes_dim)
        encoder_kwargs: dict[str, Any] = {
            "config": dict(self.conditioner.dinov2),
            "image_size": self.conditioner.image_size,
            "use_cls_token": self.conditioner.use_cls_token,
        }
        if self.conditioner.view_num is not None:
            encoder_kwargs["view_num"] = self.conditioner.view_num
        processor = "MVImageProcessorV2" if self.image_processor.multiview else "ImageProcessorV2"
        return {
            "model": {"target": "hy3dgen.shapegen.models.Hunyuan3DDiT", "params": dit},
            "vae": {"target": "hy3dgen.shapegen.models.ShapeVAE", "params": asdict(self.vae)},
            "conditioner": {
                "target": "hy3dgen.shapegen.models.SingleImageEncoder",
                "params": {
                    "main_image_encoder": {
                        "type": "DinoImageEncoderMV" if self.conditioner.multiview else "DinoImageEncoder",
                        "kwargs": encoder_kwargs,
                    }
                },
            },
            "scheduler": {"target": f"hy3dgen.shapegen.schedulers.{scheduler_target}", "params": scheduler_params},
            "image_processor": {
                "target": f"hy3dgen.shapegen.preprocessors.{processor}",
                "params": {"size": self.image_processor.size, "border_ratio": self.image_processor.border_ratio},
            },
        }


def _class_name(section: dict[str, Any], what: str) -> str:
    target = section.get("target")
    if not isinstance(target, str) or not target:
        raise ValueError(f"the {what} section has no 'target'")
    return target.rsplit(".", 1)[-1]


def _known_params(cls: type, params: dict[str, Any], what: str, ignore: frozenset[str] = frozenset()) -> dict:
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(params) - names - ignore)
    if unknown:
        raise ValueError(f"unsupported {what} parameters: {unknown}")
    return {k: v for k, v in params.items() if k in names}


def _parse_dit(section: dict[str, Any]) -> DiTConfig:
    name = _class_name(section, "model")
    if name != "Hunyuan3DDiT":
        raise UnsupportedModelError(f"model target {name!r} is not supported; expected Hunyuan3DDiT")
    # ckpt_path is a training-time option of the official class; we load weights ourselves.
    params = _known_params(DiTConfig, dict(section.get("params") or {}), "model", frozenset({"ckpt_path"}))
    if "axes_dim" in params:
        params["axes_dim"] = tuple(params["axes_dim"])
    return DiTConfig(**params)


def _parse_vae(section: dict[str, Any]) -> VAEConfig:
    name = _class_name(section, "vae")
    if name != "ShapeVAE":
        raise UnsupportedModelError(f"vae target {name!r} is not supported; expected ShapeVAE")
    # label_type and drop_path_rate only matter in training.
    params = _known_params(
        VAEConfig, dict(section.get("params") or {}), "vae", frozenset({"label_type", "drop_path_rate"})
    )
    return VAEConfig(**params)


def _parse_conditioner(section: dict[str, Any]) -> ConditionerConfig:
    name = _class_name(section, "conditioner")
    if name != "SingleImageEncoder":
        raise UnsupportedModelError(
            f"conditioner target {name!r} is not supported; only single-image models (SingleImageEncoder) are"
        )
    encoder = (section.get("params") or {}).get("main_image_encoder") or {}
    encoder_type = encoder.get("type")
    if encoder_type not in ("DinoImageEncoder", "DinoImageEncoderMV"):
        raise UnsupportedModelError(
            f"image encoder type {encoder_type!r} is not supported; expected DinoImageEncoder or DinoImageEncoderMV"
        )
    kwargs = encoder.get("kwargs") or {}
    if kwargs.get("config") is None:
        raise ValueError("the DINOv2 encoder needs an inline 'config' dict (loading by 'version' name needs the hub)")
    return ConditionerConfig(
        dinov2=dict(kwargs["config"]),
        image_size=int(kwargs.get("image_size", 224)),
        use_cls_token=bool(kwargs.get("use_cls_token", True)),
        # the official DinoImageEncoderMV defaults view_num to 4
        view_num=int(kwargs.get("view_num", MAX_VIEWS)) if encoder_type == "DinoImageEncoderMV" else None,
    )


def _parse_scheduler(section: dict[str, Any] | None) -> SchedulerConfig:
    if section is None:
        return SchedulerConfig()
    name = _class_name(section, "scheduler")
    params = dict(section.get("params") or {})
    kinds: dict[str, SchedulerKind] = {
        "FlowMatchEulerDiscreteScheduler": "flow_match_euler",
        "ConsistencyFlowMatchEulerDiscreteScheduler": "consistency_flow_match_euler",
    }
    if name not in kinds:
        raise UnsupportedModelError(f"scheduler {name!r} is not supported; expected one of {sorted(kinds)}")
    if params.get("shift", 1.0) != 1.0 or params.get("use_dynamic_shifting", False):
        raise UnsupportedModelError("shifted flow-matching schedules are not used by Hunyuan3D-2 and not supported")
    return SchedulerConfig(
        kind=kinds[name],
        num_train_timesteps=int(params.get("num_train_timesteps", 1000)),
        pcm_timesteps=int(params.get("pcm_timesteps", 50)),
    )


def _parse_image_processor(section: dict[str, Any] | None) -> ImageProcessorConfig:
    if section is None:
        return ImageProcessorConfig()
    name = _class_name(section, "image_processor")
    if name not in ("ImageProcessorV2", "MVImageProcessorV2"):
        raise UnsupportedModelError(
            f"image processor {name!r} is not supported; expected ImageProcessorV2 or MVImageProcessorV2"
        )
    params = dict(section.get("params") or {})
    border = params.get("border_ratio")
    return ImageProcessorConfig(
        size=int(params.get("size", 512)),
        border_ratio=0.15 if border is None else float(border),
        multiview=name == "MVImageProcessorV2",
    )


# --- named real-size variants (for benchmarks and parameter-count checks; no weights needed) ----------------

_DINOV2_GIANT: dict[str, Any] = {
    "attention_probs_dropout_prob": 0.0,
    "drop_path_rate": 0.0,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0,
    "hidden_size": 1536,
    "image_size": 518,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-6,
    "layerscale_value": 1.0,
    "mlp_ratio": 4,
    "model_type": "dinov2",
    "num_attention_heads": 24,
    "num_channels": 3,
    "num_hidden_layers": 40,
    "patch_size": 14,
    "qkv_bias": True,
    "use_swiglu_ffn": True,
}

_V2_0 = ShapeModelConfig(
    dit=DiTConfig(),
    vae=VAEConfig(
        num_latents=3072,
        embed_dim=64,
        num_freqs=8,
        include_pi=False,
        heads=16,
        width=1024,
        num_decoder_layers=16,
        qkv_bias=False,
        qk_norm=True,
        scale_factor=0.9990943042622529,
    ),
    conditioner=ConditionerConfig(dinov2=_DINOV2_GIANT, image_size=518),
    name="hunyuan3d-dit-v2-0",
)

_TURBO_VAE: dict[str, Any] = {
    "geo_decoder_downsample_ratio": 2,
    "geo_decoder_mlp_expand_ratio": 1,
    "geo_decoder_ln_post": False,
}

NAMED_CONFIGS: dict[str, ShapeModelConfig] = {
    "hunyuan3d-dit-v2-0": _V2_0,
    "hunyuan3d-dit-v2-0-fast": replace(
        _V2_0, dit=replace(_V2_0.dit, guidance_embed=True), name="hunyuan3d-dit-v2-0-fast"
    ),
    "hunyuan3d-dit-v2-0-turbo": replace(
        _V2_0,
        dit=replace(_V2_0.dit, guidance_embed=True),
        vae=replace(_V2_0.vae, **_TURBO_VAE),
        scheduler=SchedulerConfig(kind="consistency_flow_match_euler"),
        name="hunyuan3d-dit-v2-0-turbo",
    ),
    "hunyuan3d-dit-v2-mini": replace(
        _V2_0,
        dit=replace(_V2_0.dit, depth=8, depth_single_blocks=16),
        vae=replace(_V2_0.vae, num_latents=512, scale_factor=1.0188137142395404),
        name="hunyuan3d-dit-v2-mini",
    ),
}


def _multiview(base: ShapeModelConfig, name: str) -> ShapeModelConfig:
    return replace(
        base,
        conditioner=replace(base.conditioner, view_num=MAX_VIEWS),
        image_processor=replace(base.image_processor, multiview=True),
        name=name,
    )


# Hunyuan3D-2mv: the v2-0 DiT and VAE (the official pipeline pairs tencent/Hunyuan3D-2mv with the
# hunyuan3d-vae-v2-0 VAEs) conditioned on up to four named views, V x 1,370 DINOv2 tokens.
NAMED_CONFIGS.update(
    {
        "hunyuan3d-dit-v2-mv": _multiview(NAMED_CONFIGS["hunyuan3d-dit-v2-0"], "hunyuan3d-dit-v2-mv"),
        "hunyuan3d-dit-v2-mv-fast": _multiview(NAMED_CONFIGS["hunyuan3d-dit-v2-0-fast"], "hunyuan3d-dit-v2-mv-fast"),
        "hunyuan3d-dit-v2-mv-turbo": _multiview(NAMED_CONFIGS["hunyuan3d-dit-v2-0-turbo"], "hunyuan3d-dit-v2-mv-turbo"),
    }
)


def named_config(name: str) -> ShapeModelConfig:
    try:
        return NAMED_CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown model variant {name!r}; known: {sorted(NAMED_CONFIGS)}") from None
