"""Which VAE a model folder decodes with, and where its weights come from.

Three sources, in this order:

1. an explicit override (``from_pretrained(..., vae=PATH)`` / ``generator.vae``): a VAE-only folder
   (``hunyuan3d-vae-v2-0``, ``-v2-0-turbo``, ``-v2-mini``, ``-v2-mini-turbo``: a bare ``{target, params}``
   config.yaml and unprefixed ShapeVAE keys) or another model folder, whose ``vae`` section and ``vae.`` keys
   are used;
2. for a ``*-turbo`` DiT folder, its sibling turbo VAE folder when one is next to it. The official
   ``enable_flashvdm()`` swaps that VAE in (``tencent/Hunyuan3D-2`` -> ``hunyuan3d-vae-v2-0-turbo``,
   ``-2mini`` -> ``hunyuan3d-vae-v2-mini-turbo``, ``-2mv`` -> the v2-0 one); the turbo DiT folder itself
   carries the standard VAE;
3. the model folder's own VAE.

The VAE must decode the latents the DiT samples: its ``num_latents`` and ``embed_dim`` must equal those of the
model folder's own VAE section, else loading fails naming both folders.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import yaml

from .checkpoint import CheckpointError, WeightLayout, find_weight_file
from .config import ShapeModelConfig, VAEConfig, is_vae_folder_config

logger = logging.getLogger(__name__)

# DiT family in a "-turbo" folder name -> the turbo VAE folder the official enable_flashvdm() loads for it
TURBO_VAE_FOLDERS = {
    "v2-0": "hunyuan3d-vae-v2-0-turbo",
    "v2-mini": "hunyuan3d-vae-v2-mini-turbo",
    "v2-mv": "hunyuan3d-vae-v2-0-turbo",
}
_DIT_PREFIX = "hunyuan3d-dit-"
_TURBO_SUFFIX = "-turbo"


@dataclass(frozen=True)
class VAESource:
    """The VAE a pipeline loads: its config, the file holding its weights and how that file is keyed."""

    config: VAEConfig
    weight_file: Path
    layout: WeightLayout  # "vae": a VAE folder's bare keys; "pipeline": the vae.* keys of a model file
    reason: str  # for the log line: override, turbo sibling or the folder's own

    @property
    def folder(self) -> Path:
        return self.weight_file.parent


def turbo_vae_sibling(model_folder: Path) -> Path | None:
    """The turbo VAE folder next to a ``hunyuan3d-dit-<family>-turbo`` folder, or None when there is none."""
    name = model_folder.name
    if not (name.startswith(_DIT_PREFIX) and name.endswith(_TURBO_SUFFIX)):
        return None
    vae_name = TURBO_VAE_FOLDERS.get(name[len(_DIT_PREFIX) : -len(_TURBO_SUFFIX)])
    if vae_name is None:
        return None
    sibling = model_folder.parent / vae_name
    return sibling if (sibling / "config.yaml").is_file() else None


def read_vae_source(folder: Path, reason: str) -> VAESource:
    """The VAE of ``folder``: a VAE-only folder, or a model folder (its ``vae`` section and ``vae.`` keys)."""
    config_path = folder / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder}: not a VAE or model folder (no config.yaml)")
    with config_path.open() as f:
        raw = yaml.safe_load(f)
    weight_file = find_weight_file(folder)
    if is_vae_folder_config(raw):
        return VAESource(VAEConfig.from_yaml(config_path), weight_file, "vae", reason)
    return VAESource(ShapeModelConfig.from_yaml(config_path).vae, weight_file, "pipeline", reason)


def resolve_vae(model_folder: Path, model_config: ShapeModelConfig, override: Path | None = None) -> VAESource:
    """Pick the VAE for ``model_folder`` (override, turbo sibling, own; see the module doc) and check it fits."""
    if override is not None:
        source = read_vae_source(override, "override")
    elif (sibling := turbo_vae_sibling(model_folder)) is not None:
        source = read_vae_source(sibling, f"turbo VAE next to {model_folder.name}")
    else:
        source = VAESource(model_config.vae, find_weight_file(model_folder), "pipeline", "the model folder's own")
    expected = (model_config.vae.num_latents, model_config.vae.embed_dim)
    got = (source.config.num_latents, source.config.embed_dim)
    if got != expected:
        raise CheckpointError(
            f"VAE {source.folder} decodes latents of (num_latents, embed_dim) = {got} but {model_folder.name} "
            f"samples {expected}: use a VAE of the same model family (e.g. hunyuan3d-vae-v2-mini* for -mini)"
        )
    logger.info("%s: VAE from %s (%s)", model_folder.name, source.folder, source.reason)
    return source
