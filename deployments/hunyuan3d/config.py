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
# How DINOv2's 37 x 37 position embeddings are resized for an encoder size other than 518 px (mini-turbo's
# 1022): "size" = bicubic to (S/14, S/14), what transformers >= 4.45 and 5 do, and so what the official hy3dgen
# 2.0.2 (transformers >= 4.48) and hy3dshape (4.46.0) run; "scale_factor" = bicubic by (S/14 + 0.1) / 37, what
# transformers < 4.45 did. The two differ by ~1e-2 on the embeddings at 1022 px.
PositionInterpolation = Literal["size", "scale_factor"]
POSITION_INTERPOLATIONS: tuple[PositionInterpolation, ...] = ("size", "scale_factor")
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
class DiTV21Config:
    """Hunyuan3D-2.1 DiT (``HunYuanDiTPlain``): a plain transformer over [time token; latents] with U-Net long
    skips, cross-attention to the image tokens, and mixture-of-experts feed-forwards in the last layers.

    Field names are the official constructor's (the released ``config.yaml`` params). Options of the official
    class that the release leaves off (attention pooling, decoupled cross-attention, positional embedding,
    guidance projection) are refused by the parser rather than silently ignored.
    """

    input_size: int = 4096  # number of latents (only used upstream by the unused positional embedding)
    in_channels: int = 64
    hidden_size: int = 2048
    context_dim: int = 1024
    depth: int = 21
    num_heads: int = 16
    qk_norm: bool = True
    qkv_bias: bool = False
    text_len: int = 1370  # the attention pooler's token count upstream; no weight of ours depends on it
    num_moe_layers: int = 6
    num_experts: int = 8
    moe_top_k: int = 2

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}")
        if not 0 <= self.num_moe_layers <= self.depth:
            raise ValueError(f"num_moe_layers {self.num_moe_layers} must be within 0..depth ({self.depth})")
        if not 1 <= self.moe_top_k <= self.num_experts:
            raise ValueError(f"moe_top_k {self.moe_top_k} must be within 1..num_experts ({self.num_experts})")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden_dim(self) -> int:
        # the official block hard-codes 4x for both the MLP and every expert (its mlp_ratio is never read)
        return 4 * self.hidden_size

    @property
    def context_in_dim(self) -> int:
        """Width of the image tokens (the name :class:`ShapeModelConfig` checks against the encoder)."""
        return self.context_dim

    @property
    def guidance_embed(self) -> bool:
        # the official 2.1 pipeline passes `guidance=`, which HunYuanDiTPlain never reads: always CFG
        return False

    def is_moe_layer(self, layer: int) -> bool:
        """The last ``num_moe_layers`` blocks use experts (official rule ``depth - layer <= num_moe_layers``)."""
        return self.depth - layer <= self.num_moe_layers

    def has_skip(self, layer: int) -> bool:
        """Blocks after the middle one take a long skip from their mirror in the first half."""
        return layer > self.depth // 2


AnyDiTConfig = DiTConfig | DiTV21Config


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

    @classmethod
    def from_yaml(cls, path: str | Path) -> VAEConfig:
        """The config of a VAE-only folder (``hunyuan3d-vae-v2-0``, ``-turbo``, ...): a bare ``{target, params}``."""
        import yaml  # a server dependency, as in ShapeModelConfig.from_yaml

        path = Path(path)
        with path.open() as f:
            raw = yaml.safe_load(f)
        if not is_vae_folder_config(raw):
            raise ValueError(
                f"{path}: not a VAE folder's config (expected a bare 'target: ...ShapeVAE' + 'params' mapping); "
                "a full model folder's config has model/vae/conditioner sections"
            )
        return _parse_vae(raw)

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
    # not in released configs: a runtime choice (see PositionInterpolation), default what the official code runs
    position_interpolation: PositionInterpolation = "size"

    def __post_init__(self) -> None:
        if self.position_interpolation not in POSITION_INTERPOLATIONS:
            raise ValueError(
                f"position_interpolation must be one of {list(POSITION_INTERPOLATIONS)}, "
                f"got {self.position_interpolation!r}"
            )
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
    dit: AnyDiTConfig = field(default_factory=DiTConfig)
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
        if is_vae_folder_config(raw):
            raise ValueError(
                "this is a VAE folder's config (a bare ShapeVAE target), not a model folder's: load it as the "
                "VAE of a model folder (`vae=` / `generator.vae`)"
            )
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
        if isinstance(self.dit, DiTConfig):
            dit["axes_dim"] = list(self.dit.axes_dim)
            dit_target = "hy3dgen.shapegen.models.Hunyuan3DDiT"
        else:
            dit_target = "hy3dshape.models.denoisers.hunyuandit.HunYuanDiTPlain"
        encoder_kwargs: dict[str, Any] = {
            "config": dict(self.conditioner.dinov2),
            "image_size": self.conditioner.image_size,
            "use_cls_token": self.conditioner.use_cls_token,
        }
        if self.conditioner.view_num is not None:
            encoder_kwargs["view_num"] = self.conditioner.view_num
        processor = "MVImageProcessorV2" if self.image_processor.multiview else "ImageProcessorV2"
        return {
            "model": {"target": dit_target, "params": dit},
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


# HunYuanDiTPlain options: values the official class takes but our implementation does not need, each with
# the only value the release uses (any other value is refused: it would change the architecture).
_V21_FIXED_PARAMS: dict[str, Any] = {
    "norm_type": "layer",
    "qk_norm_type": "rms",
    "with_decoupled_ca": False,
    "use_pos_emb": False,
    "use_attention_pooling": False,
    "guidance_cond_proj_dim": None,
}
# accepted and ignored: the official block never reads mlp_ratio (4x is hard-coded); the decoupled
# cross-attention sizes only matter with with_decoupled_ca
_V21_IGNORED_PARAMS = frozenset(
    {"mlp_ratio", "additional_cond_hidden_state", "decoupled_ca_dim", "decoupled_ca_weight", "ckpt_path"}
)


def _parse_dit(section: dict[str, Any]) -> AnyDiTConfig:
    name = _class_name(section, "model")
    if name == "HunYuanDiTPlain":
        return _parse_dit_v21(dict(section.get("params") or {}))
    if name != "Hunyuan3DDiT":
        raise UnsupportedModelError(
            f"model target {name!r} is not supported; expected Hunyuan3DDiT (2.0) or HunYuanDiTPlain (2.1)"
        )
    # ckpt_path is a training-time option of the official class; we load weights ourselves.
    params = _known_params(DiTConfig, dict(section.get("params") or {}), "model", frozenset({"ckpt_path"}))
    if "axes_dim" in params:
        params["axes_dim"] = tuple(params["axes_dim"])
    return DiTConfig(**params)


def is_vae_folder_config(raw: Any) -> bool:
    """A VAE-only folder's config.yaml is one bare ``{target, params}`` section, not a model's sections."""
    return isinstance(raw, dict) and "target" in raw and "model" not in raw


def _parse_dit_v21(params: dict[str, Any]) -> DiTV21Config:
    for key, released in _V21_FIXED_PARAMS.items():
        if key in params and params.pop(key) != released:
            raise UnsupportedModelError(f"HunYuanDiTPlain with {key} != {released!r} is not supported")
    return DiTV21Config(**_known_params(DiTV21Config, params, "model", _V21_IGNORED_PARAMS))


# ShapeVAE parameters that only shape its point-cloud ENCODER (training / encoding); we build the decoder only,
# so they are accepted and ignored (their weights are dropped by name in checkpoint.map_key).
VAE_ENCODER_ONLY_PARAMS = frozenset(
    {"num_encoder_layers", "pc_size", "pc_sharpedge_size", "point_feats", "downsample_ratio", "use_ln_post"}
)


def _parse_vae(section: dict[str, Any]) -> VAEConfig:
    name = _class_name(section, "vae")
    if name != "ShapeVAE":
        raise UnsupportedModelError(f"vae target {name!r} is not supported; expected ShapeVAE")
    # label_type and drop_path_rate only matter in training.
    params = _known_params(
        VAEConfig,
        dict(section.get("params") or {}),
        "vae",
        frozenset({"label_type", "drop_path_rate", "ckpt_path"}) | VAE_ENCODER_ONLY_PARAMS,
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

_V2_0_DIT = DiTConfig()  # typed as the 2.0 DiT (ShapeModelConfig.dit is the union of both generations)

_V2_0 = ShapeModelConfig(
    dit=_V2_0_DIT,
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

# Hunyuan3D-2.1 (tencent/Hunyuan3D-2.1 hunyuan3d-dit-v2-1): DINOv2-large (no SwiGLU), 4,096 latents.
# Values from the official hy3dshape configs (configs/hunyuandit-finetuning-...-4096.yaml, the released model).
_DINOV2_LARGE: dict[str, Any] = {
    **_DINOV2_GIANT,
    "hidden_size": 1024,
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "use_swiglu_ffn": False,
}

_V2_1 = ShapeModelConfig(
    dit=DiTV21Config(),
    vae=replace(_V2_0.vae, num_latents=4096, scale_factor=1.0039506158752403),
    conditioner=ConditionerConfig(dinov2=_DINOV2_LARGE, image_size=518),
    name="hunyuan3d-dit-v2-1",
)

_TURBO_VAE: dict[str, Any] = {
    "geo_decoder_downsample_ratio": 2,
    "geo_decoder_mlp_expand_ratio": 1,
    "geo_decoder_ln_post": False,
}

# Mini: half the DiT blocks and a sixth of the latents, the same DINOv2-giant. The conditioning size and
# border of mini and mini-fast are v2-0's here: no copy of their released config was at hand to confirm them.
_MINI_DIT = replace(_V2_0_DIT, depth=8, depth_single_blocks=16)
_MINI = replace(
    _V2_0,
    dit=_MINI_DIT,
    vae=replace(_V2_0.vae, num_latents=512, scale_factor=1.0188137142395404),
    name="hunyuan3d-dit-v2-mini",
)

NAMED_CONFIGS: dict[str, ShapeModelConfig] = {
    "hunyuan3d-dit-v2-0": _V2_0,
    "hunyuan3d-dit-v2-0-fast": replace(
        _V2_0, dit=replace(_V2_0_DIT, guidance_embed=True), name="hunyuan3d-dit-v2-0-fast"
    ),
    "hunyuan3d-dit-v2-0-turbo": replace(
        _V2_0,
        dit=replace(_V2_0_DIT, guidance_embed=True),
        vae=replace(_V2_0.vae, **_TURBO_VAE),
        scheduler=SchedulerConfig(kind="consistency_flow_match_euler"),
        name="hunyuan3d-dit-v2-0-turbo",
    ),
    "hunyuan3d-dit-v2-mini": _MINI,
    "hunyuan3d-dit-v2-mini-fast": replace(
        _MINI, dit=replace(_MINI_DIT, guidance_embed=True), name="hunyuan3d-dit-v2-mini-fast"
    ),
    # Copies of the released mini-turbo config condition DINOv2 at 1022 px (73 x 73 patches + CLS = 5,330
    # tokens, position embeddings interpolated from 37 x 37), recentre without a border and sample the
    # consistency grid of 100 PCM steps. The -turbo DiT folder carries the standard mini VAE (the turbo VAE
    # is a separate folder). Not checked against the file on the hub.
    "hunyuan3d-dit-v2-mini-turbo": replace(
        _MINI,
        dit=replace(_MINI_DIT, guidance_embed=True),
        conditioner=replace(_MINI.conditioner, image_size=1022),
        scheduler=SchedulerConfig(kind="consistency_flow_match_euler", pcm_timesteps=100),
        image_processor=ImageProcessorConfig(border_ratio=0.0),
        name="hunyuan3d-dit-v2-mini-turbo",
    ),
    "hunyuan3d-dit-v2-1": _V2_1,
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
