"""Finding and strictly loading released Hunyuan3D-2 checkpoints.

A released model folder holds ``config.yaml`` and one of the weight files below. Their keys are flat with a
first prefix naming the component (``model.`` DiT, ``vae.`` VAE decoder, ``conditioner.`` image encoder); a
``.ckpt`` holds the same as a dict of three state dicts. Every upstream key goes through :func:`map_key`
(upstream name -> (component, our name), ``None`` drops it); an unknown key, a missing key or a shape
mismatch is an error naming the key.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from torch import Tensor, nn

from .config import AnyDiTConfig, DiTV21Config

logger = logging.getLogger(__name__)

# Preference order when several files are present: safetensors (no pickle) first, fp16 (the release) first.
WEIGHT_FILES = ("model.fp16.safetensors", "model.safetensors", "model.fp16.ckpt", "model.ckpt")
COMPONENTS = ("model", "vae", "conditioner")


class CheckpointError(ValueError):
    """The checkpoint does not match the architecture its config describes."""


def find_weight_file(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder}: no weights found; expected one of {', '.join(WEIGHT_FILES)}")


def read_checkpoint(path: Path) -> dict[str, Tensor]:
    """Flat ``component.name -> tensor`` dict from a .safetensors or .ckpt file."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(raw, dict) or not set(raw) <= set(COMPONENTS):
        raise CheckpointError(f"{path}: expected a dict with keys {COMPONENTS}, got {sorted(raw)[:5]}")
    return {f"{component}.{key}": value for component, sd in raw.items() for key, value in sd.items()}


# transformers 4 DINOv2 names -> transformers 5 names (the release was saved with transformers 4)
_DINOV2_RENAMES = (
    (re.compile(r"\.attention\.attention\.query\."), ".attention.q_proj."),
    (re.compile(r"\.attention\.attention\.key\."), ".attention.k_proj."),
    (re.compile(r"\.attention\.attention\.value\."), ".attention.v_proj."),
    (re.compile(r"\.attention\.output\.dense\."), ".attention.o_proj."),
    (re.compile(r"\.mlp\.weights_out\."), ".mlp.down_proj."),
)
_SWIGLU_IN = re.compile(r"^(.*\.mlp)\.weights_in\.(weight|bias)$")
_CONDITIONER_PREFIX = "main_image_encoder.model."
# The released 2.1 VAE holds the whole ShapeVAE, point-cloud encoder included (the official loader is
# non-strict). We build the decoder only: these official ShapeVAE attribute prefixes are dropped by name, and
# every other VAE key stays strict.
VAE_ENCODER_PREFIXES = ("encoder.", "pre_kl.")


def is_vae_encoder_key(name: str) -> bool:
    """A ``vae.`` key (prefix removed) of the VAE's encoder half, which shape generation never runs."""
    return name.startswith(VAE_ENCODER_PREFIXES)


def map_key(key: str) -> tuple[str, str] | None:
    """Upstream key -> (component, our parameter name); ``None`` means the key is intentionally dropped."""
    component, _, name = key.partition(".")
    if component == "vae" and is_vae_encoder_key(name):
        return None
    if component in ("model", "vae"):
        return component, name
    if component == "conditioner":
        if not name.startswith(_CONDITIONER_PREFIX):
            raise CheckpointError(f"unexpected conditioner key {key!r} (only a single DINOv2 encoder is supported)")
        name = name[len(_CONDITIONER_PREFIX) :]
        for pattern, replacement in _DINOV2_RENAMES:
            name = pattern.sub(replacement, name)
        return component, "model." + name
    raise CheckpointError(f"unexpected checkpoint key {key!r}: the first prefix must be one of {COMPONENTS}")


def convert_checkpoint(flat: dict[str, Tensor], dit: AnyDiTConfig | None = None) -> dict[str, dict[str, Tensor]]:
    """Upstream flat dict -> per-component state dicts with our names (fused SwiGLU input split).

    With a 2.1 ``dit`` config the DiT weights also get its load-time folds (q/k/v unmixing, expert stacking:
    :func:`~.dit_v21.convert_official_state_dict`).
    """
    out: dict[str, dict[str, Tensor]] = {c: {} for c in COMPONENTS}
    dropped = 0
    for key, value in flat.items():
        mapped = map_key(key)
        if mapped is None:
            dropped += 1
            continue
        component, name = mapped
        swiglu = _SWIGLU_IN.match(name) if component == "conditioner" else None
        if swiglu:
            # transformers 4 fuses [gate; up] along dim 0; transformers 5 keeps them apart
            gate, up = value.chunk(2, dim=0)
            out[component][f"{swiglu[1]}.gate_proj.{swiglu[2]}"] = gate
            out[component][f"{swiglu[1]}.up_proj.{swiglu[2]}"] = up
        else:
            out[component][name] = value
    if dropped:
        logger.info(
            "checkpoint: dropped %d VAE encoder tensors (%s*), unused by shape generation",
            dropped,
            "*, ".join(VAE_ENCODER_PREFIXES),
        )
    if isinstance(dit, DiTV21Config):
        from .dit_v21 import convert_official_state_dict  # torch model code, loaded only for 2.1 folders

        out["model"] = convert_official_state_dict(out["model"], dit)
    return out


def load_strict(module: nn.Module, state_dict: dict[str, Tensor], what: str) -> None:
    """Copy weights into ``module``; any missing, unexpected or mis-shaped key is an error naming it."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{what}: checkpoint does not match the config: "
            f"missing {_preview(missing)}, unexpected {_preview(unexpected)}"
        )
    for key, value in state_dict.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"{what}: {key} has shape {tuple(value.shape)} in the checkpoint, {tuple(expected[key].shape)} "
                "in the model built from config.yaml"
            )
    module.load_state_dict(state_dict, strict=True)


def _preview(keys: list[str], limit: int = 5) -> str:
    if not keys:
        return "none"
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more
