"""Finding and strictly loading released Hunyuan3D-2 checkpoints.

A released model folder holds ``config.yaml`` and one of the weight files below. Their keys are flat with a
first prefix naming the component (``model.`` DiT, ``vae.`` VAE decoder, ``conditioner.`` image encoder); a
``.ckpt`` holds the same as a dict of three state dicts. Every upstream key goes through :func:`map_key`
(upstream name -> (component, our name), ``None`` drops it); an unknown key, a missing key or a shape
mismatch is an error naming the key.

A VAE-only folder (``hunyuan3d-vae-v2-0``, ``-v2-0-turbo``, ``-v2-mini``, ``-v2-mini-turbo``) holds the bare
ShapeVAE state dict: the same names without the ``vae.`` prefix (``layout="vae"`` below puts it back, so one
key map serves both). Tensors are read one at a time (safetensors by plain reads, a ``.ckpt`` memory-mapped) so a
loader can cast and place each before reading the next, never holding the whole file next to the model.
"""

from __future__ import annotations

import json
import logging
import re
import struct
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Literal

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


WeightLayout = Literal["pipeline", "vae"]


def iter_checkpoint(
    path: Path, layout: WeightLayout = "pipeline", components: Collection[str] = COMPONENTS
) -> Iterator[tuple[str, Tensor]]:
    """``component.name -> tensor`` pairs of a .safetensors or .ckpt file, one tensor at a time.

    ``layout="pipeline"``: a model folder's file (prefixed keys, or a .ckpt dict of component state dicts);
    top-level .ckpt entries other than the three components (training state, say) are skipped with one INFO
    line, as the official loader ignores them. ``layout="vae"``: a VAE folder's bare ShapeVAE state dict.
    Keys of a known component not in ``components`` are skipped unread (a model file's VAE when another VAE
    folder replaces it); unknown prefixes still reach :func:`map_key` and fail there.
    """
    if path.suffix == ".safetensors":
        for key, tensor in _read_safetensors(path, lambda k: _wanted(f"vae.{k}" if layout == "vae" else k, components)):
            yield (f"vae.{key}" if layout == "vae" else key), tensor
        return
    # mmap: the file's pages are read as each tensor is used, not all up front
    raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a dict, got {type(raw).__name__}")
    if layout == "vae":
        yield from _tensor_items(raw, "vae", path)
        return
    present = [c for c in COMPONENTS if c in raw]
    if not present:
        raise CheckpointError(f"{path}: expected a dict with keys {COMPONENTS}, got {sorted(map(str, raw))[:5]}")
    extra = sorted(str(k) for k in raw if k not in COMPONENTS)
    if extra:
        logger.info("%s: ignoring top-level checkpoint entries %s (only %s hold weights)", path, extra, COMPONENTS)
    for component in present:
        if component in components:
            yield from _tensor_items(raw[component], component, path)


def read_checkpoint(
    path: Path, layout: WeightLayout = "pipeline", components: Collection[str] = COMPONENTS
) -> dict[str, Tensor]:
    """Flat ``component.name -> tensor`` dict from a .safetensors or .ckpt file (all of it in memory)."""
    return dict(iter_checkpoint(path, layout, components))


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _read_safetensors(path: Path, wanted: Callable[[str], bool]) -> Iterator[tuple[str, Tensor]]:
    """The tensors of a .safetensors file, each read into its own buffer with plain reads.

    Not ``safe_open``: it maps the whole file, and every mapped page it touches stays in the process's RSS
    until the file is closed, so a load would peak at the model plus the file. Format: an 8-byte
    little-endian header length, a JSON header ``name -> {dtype, shape, data_offsets}``, then the data.
    """
    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
        for key, info in header.items():
            if key == "__metadata__" or not wanted(key):
                continue
            dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
            if dtype is None:
                raise CheckpointError(f"{path}: {key} has an unsupported dtype {info['dtype']!r}")
            begin, end = info["data_offsets"]
            f.seek(8 + size + begin)
            buffer = bytearray(end - begin)
            if f.readinto(buffer) != len(buffer):
                raise CheckpointError(f"{path}: truncated file (reading {key})")
            tensor = torch.frombuffer(buffer, dtype=dtype) if buffer else torch.empty(0, dtype=dtype)
            yield key, tensor.reshape(info["shape"])


def _wanted(flat_key: str, components: Collection[str]) -> bool:
    component = flat_key.partition(".")[0]
    return component in components or component not in COMPONENTS


def _tensor_items(state_dict: object, component: str, path: Path) -> Iterator[tuple[str, Tensor]]:
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{path}: {component!r} must be a state dict, got {type(state_dict).__name__}")
    for key, value in state_dict.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{path}: {component}.{key} is a {type(value).__name__}, not a tensor")
        yield f"{component}.{key}", value


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


def convert_checkpoint(
    flat: Mapping[str, Tensor] | Iterable[tuple[str, Tensor]],
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
    dit: AnyDiTConfig | None = None,
) -> dict[str, dict[str, Tensor]]:
    """Upstream flat dict -> per-component state dicts with our names (fused SwiGLU input split).

    With ``dtype``/``device`` each floating tensor is cast and moved as it is read, so the source copy of one
    tensor at most is alive next to the converted ones. With a 2.1 ``dit`` config the DiT weights also get its
    load-time folds (q/k/v unmixing, expert stacking: :func:`~.dit_v21.convert_official_state_dict`).
    """
    out: dict[str, dict[str, Tensor]] = {c: {} for c in COMPONENTS}
    dropped = 0
    items = flat.items() if isinstance(flat, Mapping) else flat
    for key, value in items:
        mapped = map_key(key)
        if mapped is None:
            dropped += 1
            continue
        component, name = mapped
        if value.is_floating_point() and (dtype is not None or device is not None):
            value = value.to(device=device, dtype=dtype)
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


def load_strict(module: nn.Module, state_dict: dict[str, Tensor], what: str, assign: bool = False) -> None:
    """Copy weights into ``module``; any missing, unexpected or mis-shaped key is an error naming it.

    ``assign``: the tensors become the parameters (for a module built on the meta device; they must already
    have the target dtype and device).
    """
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
    module.load_state_dict(state_dict, strict=True, assign=assign)


def _preview(keys: list[str], limit: int = 5) -> str:
    if not keys:
        return "none"
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more
