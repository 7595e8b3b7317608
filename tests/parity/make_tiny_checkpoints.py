"""Build TINY random-weight checkpoints in the exact released Hunyuan3D-2 layout.

Runs in the REFERENCE venv (official hy3dgen 2.0.2 + torch/torchvision/transformers 4),
never in the project venv.  Build it as described in tests/parity/README.md, e.g.:

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.5.1 torchvision==0.20.1 transformers==4.46.3 \
        diffusers==0.31.0 einops opencv-python-headless trimesh scikit-image pyyaml tqdm \
        safetensors "numpy<2" omegaconf
    /tmp/refvenv/bin/pip install --no-deps hy3dgen==2.0.2      # or the downloaded wheel
    /tmp/refvenv/bin/python tests/parity/make_tiny_checkpoints.py

Writes (released layout, as in tencent/Hunyuan3D-2 on the model hub):

    configs/models/tiny-Hunyuan3D-2/hunyuan3d-dit-v2-0/config.yaml
    configs/models/tiny-Hunyuan3D-2/hunyuan3d-dit-v2-0/model.fp16.safetensors
    configs/models/tiny-Hunyuan3D-2/hunyuan3d-dit-v2-0-fast/config.yaml       (guidance_embed: true)
    configs/models/tiny-Hunyuan3D-2/hunyuan3d-dit-v2-0-fast/model.fp16.safetensors

Every module is built by the OFFICIAL classes through hy3dgen's own
``instantiate_from_config`` from the same config dict that is written to
config.yaml; weights are PyTorch/transformers default random init under
``torch.manual_seed`` followed by the deterministic tuning in ``tune_vae`` (see
there: it only rescales / sets a few VAE decoder weights so that the random
model yields a real, well-conditioned occupancy surface).  The safetensors file
is ONE flat file with keys ``model.*``, ``vae.*``, ``conditioner.*`` (split on the
first dot by the official ``from_single_file``), all tensors fp16; the
conditioner keys are transformers-4 Dinov2Model names
(``...attention.attention.query``, ``mlp.weights_in``, ...).

Each folder is then verified by loading it back with the official
``Hunyuan3DDiTFlowMatchingPipeline.from_single_file(..., use_safetensors=True)``
(strict ``load_state_dict``) and by a short official run whose mesh must have
thousands of faces at octree_resolution 64.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
import yaml
from _refenv import IMAGES_DIR, MODEL_FOLDERS, TINY_ROOT, import_shapegen

SEED = 20240601

# --------------------------------------------------------------------------------------
# Tiny configs.  Same sections / targets / param names as the released
# hunyuan3d-dit-v2-0/config.yaml; only the sizes are shrunk.  Sizes are chosen to
# be pairwise distinct where possible (DINO 48, DiT 64, VAE width 32, latent
# channels 8, 128 latents) so that a transposed or mis-routed weight in a
# re-implementation fails loudly instead of silently broadcasting.
# --------------------------------------------------------------------------------------
DINO_HIDDEN = 48
DIT_HIDDEN = 64
DIT_HEADS = 4
VAE_EMBED = 8

DINOV2_CONFIG = {
    # same keys as the released (dinov2-giant) inline config, tiny sizes
    "attention_probs_dropout_prob": 0.0,
    "drop_path_rate": 0.0,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0,
    "hidden_size": DINO_HIDDEN,
    "image_size": 518,  # kept: 37x37 patches + CLS = 1370 tokens, as in the real model
    "initializer_range": 0.02,
    "layer_norm_eps": 1.0e-6,
    "layerscale_value": 1.0,
    "mlp_ratio": 4,
    "model_type": "dinov2",
    "num_attention_heads": 3,
    "num_channels": 3,
    "num_hidden_layers": 2,
    "patch_size": 14,
    "qkv_bias": True,
    "torch_dtype": "float32",
    "use_swiglu_ffn": True,
}


def base_config(guidance_embed: bool) -> dict:
    model_params = {
        "in_channels": VAE_EMBED,
        "context_in_dim": DINO_HIDDEN,
        "hidden_size": DIT_HIDDEN,
        "mlp_ratio": 4.0,
        "num_heads": DIT_HEADS,
        "depth": 2,
        "depth_single_blocks": 2,
        "axes_dim": [DIT_HIDDEN // DIT_HEADS],
        "theta": 10000,
        "qkv_bias": True,
    }
    if guidance_embed:
        model_params["guidance_embed"] = True
    return {
        "model": {"target": "hy3dgen.shapegen.models.Hunyuan3DDiT", "params": model_params},
        "vae": {
            "target": "hy3dgen.shapegen.models.ShapeVAE",
            "params": {
                "num_latents": 128,
                "embed_dim": VAE_EMBED,
                "num_freqs": 8,
                "include_pi": False,
                "heads": 2,
                "width": 32,
                "num_decoder_layers": 2,
                "qkv_bias": False,
                "qk_norm": True,
                # non-1 so that a missing / inverted latent rescale is caught
                "scale_factor": 0.8731234669685364,
            },
        },
        "conditioner": {
            "target": "hy3dgen.shapegen.models.SingleImageEncoder",
            "params": {
                "main_image_encoder": {
                    "type": "DinoImageEncoder",
                    "kwargs": {
                        "config": copy.deepcopy(DINOV2_CONFIG),
                        "image_size": 518,
                        "use_cls_token": True,
                    },
                }
            },
        },
        "scheduler": {
            "target": "hy3dgen.shapegen.schedulers.FlowMatchEulerDiscreteScheduler",
            "params": {"num_train_timesteps": 1000},
        },
        "image_processor": {
            "target": "hy3dgen.shapegen.preprocessors.ImageProcessorV2",
            "params": {"size": 512, "border_ratio": 0.15},
        },
        "pipeline": {"target": "hy3dgen.shapegen.pipelines.Hunyuan3DDiTFlowMatchingPipeline"},
    }


HEADER = """\
# TINY random-weight test model in the released Hunyuan3D-2 layout
# (tencent/Hunyuan3D-2/{folder}/config.yaml).  NOT a real model: generated by
# tests/parity/make_tiny_checkpoints.py with the official hy3dgen 2.0.2 classes,
# seed {seed}; weights in model.fp16.safetensors next to this file.
"""


# --------------------------------------------------------------------------------------
# Break trivial (constant) default inits
# --------------------------------------------------------------------------------------
# Default init leaves every LayerNorm/RMSNorm weight at 1 and bias at 0, DINOv2's
# LayerScale at layerscale_value (1.0) and DINOv2's Linear biases at 0.  A
# re-implementation that drops a norm's affine, swaps q_norm/k_norm, forgets a bias or
# the LayerScale would then still match the reference bit-for-bit.  So every parameter
# tensor that is constant after init gets a small deterministic perturbation:
# ones -> 1 + 0.1*N(0,1), zeros -> 0.02*N(0,1) (other constants c -> c*(1 + 0.1*N)).
@torch.no_grad()
def perturb_constant_params(module: torch.nn.Module, seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    changed = []
    for name, p in module.named_parameters():
        flat = p.detach().flatten()
        if flat.numel() == 0 or not bool((flat == flat[0]).all()):
            continue
        c = float(flat[0])
        noise = torch.randn(p.shape, generator=g)
        if c == 0.0:
            p.copy_(0.02 * noise)
        else:
            p.copy_(c * (1.0 + 0.1 * noise))
        changed.append(name)
    return changed


# --------------------------------------------------------------------------------------
# Deterministic tuning of the random VAE decoder
# --------------------------------------------------------------------------------------
# Why: with default random init the occupancy decoder is useless for testing:
#  * the query embedding is query_proj(Fourier(xyz)) with frequencies 2^0..2^7 (include_pi
#    false), so a random query_proj mixes in 128 rad/unit sinusoids -> the field is
#    white noise at octree resolution 64 (cell 0.03), not a surface;
#  * the logits are O(0.1-1), so many grid values sit within float noise of mc_level 0
#    and vertex/face counts of two correct implementations would differ by accident.
# What we do (all deterministic, applied before the fp16 cast; config unchanged):
#  1. query_proj: scale the sin/cos columns of frequency 2^f by DECAY**f (the raw xyz
#     columns are kept) -> a smooth, band-limited field;
#  2. a "blob prior": add BLOB_GAIN * u * (cos x + cos y + cos z - BLOB_S0) to the query
#     embedding via the cos(2^0 * .) columns and the query_proj bias, with a fixed random
#     unit direction u; cos x + cos y + cos z is ~3 - r^2/2 near the origin, so the
#     u-component is positive inside a radius ~0.6-0.7 ball and negative outside.
#     The latent-dependent cross-attention / MLP residuals then deform that ball, so the
#     surface is closed-ish, bumpy and depends on the generated latents (image, seed);
#  3. output_proj: weight = LOGIT_GAIN * (u_hat + noise), bias 0 -> the logit is
#     dominated by the blob direction with a latent-dependent perturbation, and its
#     magnitude is large (std of the grid logits >> 1) so grid values near the level
#     are rare (|logit| < 1e-5 essentially never happens at R <= 64);
#  4. cross-attention: multiply the k_norm (LayerNorm) weight by ATTN_KEY_GAIN and the
#     c_proj weight by ATTN_OUT_GAIN.  With unit-scale q/k the softmax over the 128
#     latent tokens is almost uniform, so every query point sees ~the mean token and the
#     surface barely depends on the latents (seed / image); sharper attention makes the
#     decoded shape visibly latent-dependent (face count varies by ~5-10% between
#     seeds) while the blob prior keeps it one closed, watertight component.
DECAY = 0.35
BLOB_GAIN = 3.0
BLOB_S0 = 2.75
LOGIT_GAIN = 6.0
OUT_NOISE = 0.5
ATTN_KEY_GAIN = 6.0
ATTN_OUT_GAIN = 1.5


@torch.no_grad()
def tune_vae(vae, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed + 7)
    dec = vae.geo_decoder
    fe = vae.fourier_embedder
    nf = fe.num_freqs
    width = dec.query_proj.out_features
    W = dec.query_proj.weight  # (width, 3 * (2 * nf + 1))
    assert W.shape[1] == 3 * (2 * nf + 1) and fe.include_input
    # Fourier layout (hy3dgen FourierEmbedder): [x, y, z, sin(x*f0..f7, y*.., z*..), cos(...)]
    col_scale = torch.ones(W.shape[1])
    for d in range(3):
        for f in range(nf):
            col_scale[3 + d * nf + f] = DECAY**f
            col_scale[3 + 3 * nf + d * nf + f] = DECAY**f
    W.mul_(col_scale[None, :])

    u = torch.randn(width, generator=g)
    u = u - u.mean()  # zero-mean so LayerNorm does not remove it
    u = u / u.norm() * math.sqrt(width)  # unit RMS
    for d in range(3):
        W[:, 3 + 3 * nf + d * nf + 0] += BLOB_GAIN * u
    dec.query_proj.bias.add_(-BLOB_GAIN * BLOB_S0 * u)

    w_out = u / math.sqrt(width) + OUT_NOISE * torch.randn(width, generator=g) / math.sqrt(width)
    dec.output_proj.weight.copy_(LOGIT_GAIN * w_out[None, :])
    dec.output_proj.bias.zero_()

    attn = dec.cross_attn_decoder.attn
    if isinstance(attn.attention.k_norm, torch.nn.Identity):
        # turbo decoder (geo_decoder_ln_post false also drops the q/k norms): scale the key rows of c_kv
        # instead, laid out (heads, [k; v], head_dim) as the official view + split reads them
        w = attn.c_kv.weight
        w.view(attn.attention.heads, 2, -1, w.shape[1])[:, 0].mul_(ATTN_KEY_GAIN)
    else:
        attn.attention.k_norm.weight.mul_(ATTN_KEY_GAIN)
    attn.c_proj.weight.mul_(ATTN_OUT_GAIN)
    return {
        "decay": DECAY,
        "blob_gain": BLOB_GAIN,
        "blob_s0": BLOB_S0,
        "logit_gain": LOGIT_GAIN,
        "out_noise": OUT_NOISE,
        "attn_key_gain": ATTN_KEY_GAIN,
        "attn_out_gain": ATTN_OUT_GAIN,
    }


# --------------------------------------------------------------------------------------
def build_components(cfg: dict, seed: int):
    """Instantiate model / vae / conditioner exactly as hy3dgen's from_single_file does."""
    from hy3dgen.shapegen.pipelines import instantiate_from_config

    torch.manual_seed(seed)
    model = instantiate_from_config(copy.deepcopy(cfg["model"]))
    vae = instantiate_from_config(copy.deepcopy(cfg["vae"]))
    conditioner = instantiate_from_config(copy.deepcopy(cfg["conditioner"]))
    return model, vae, conditioner


def state_dict_fp16(model, vae, conditioner) -> dict:
    out = {}
    for prefix, mod in (("model", model), ("vae", vae), ("conditioner", conditioner)):
        for k, v in mod.state_dict().items():
            out[f"{prefix}.{k}"] = v.detach().to(torch.float16).contiguous().clone()
    return out


class _BlockDumper(yaml.SafeDumper):
    """Block-style mappings, flow-style lists (``axes_dim: [16]``), like the released files."""


_BlockDumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def write_folder(folder: str, cfg: dict, tensors: dict, seed: int) -> tuple[str, str]:
    import safetensors.torch

    d = os.path.join(TINY_ROOT, folder)
    os.makedirs(d, exist_ok=True)
    cfg_path = os.path.join(d, "config.yaml")
    with open(cfg_path, "w") as f:
        f.write(HEADER.format(folder=folder, seed=seed))
        for i, section in enumerate(("model", "vae", "conditioner", "scheduler", "image_processor", "pipeline")):
            if i:
                f.write("\n")
            yaml.dump({section: cfg[section]}, f, Dumper=_BlockDumper, sort_keys=False, default_flow_style=False)
    ckpt_path = os.path.join(d, "model.fp16.safetensors")
    safetensors.torch.save_file(tensors, ckpt_path, metadata={"format": "pt"})
    return cfg_path, ckpt_path


def load_official(folder: str):
    from hy3dgen.shapegen.pipelines import Hunyuan3DDiTFlowMatchingPipeline

    d = os.path.join(TINY_ROOT, folder)
    return Hunyuan3DDiTFlowMatchingPipeline.from_single_file(
        os.path.join(d, "model.fp16.safetensors"),
        os.path.join(d, "config.yaml"),
        device="cpu",
        dtype=torch.float32,
        use_safetensors=True,
    )


@torch.no_grad()
def check_surface(pipe, image_path: str, seed: int, resolution: int = 64) -> dict:
    """One short official run; report the grid-logit statistics and mesh size."""
    from PIL import Image

    latents = pipe(
        image=Image.open(image_path),
        num_inference_steps=5,
        guidance_scale=5.0,
        generator=[torch.Generator("cpu").manual_seed(seed)],
        output_type="latent",
        enable_pbar=False,
    )
    z = pipe.vae(1.0 / pipe.vae.scale_factor * latents)
    grid = pipe.vae.volume_decoder(
        z, pipe.vae.geo_decoder, bounds=1.01, num_chunks=8000, octree_resolution=resolution, enable_pbar=False
    )[0]
    meshes = pipe._export(latents, "trimesh", 1.01, 0.0, 8000, resolution, None, enable_pbar=False)
    m = meshes[0]
    g = grid.flatten()
    return {
        "image": os.path.basename(image_path),
        "seed": seed,
        "resolution": resolution,
        "latent_std": float(latents.std()),
        "logit_std": float(g.std()),
        "logit_min": float(g.min()),
        "logit_max": float(g.max()),
        "frac_pos": float((g > 0).float().mean()),
        "min_abs_logit": float(g.abs().min()),
        "faces": None if m is None else len(m.faces),
        "vertices": None if m is None else len(m.vertices),
        "watertight": None if m is None else bool(m.is_watertight),
        "components": None if m is None else len(m.split(only_watertight=False)),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--no-check", action="store_true", help="skip the short official surface check")
    args = ap.parse_args()

    import_shapegen()
    import safetensors.torch

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    summary = {}
    for folder in MODEL_FOLDERS:
        fast = folder.endswith("-fast")
        cfg = base_config(guidance_embed=fast)
        # distinct but fixed seed per folder; the fast model is a different random model
        seed = args.seed + (1 if fast else 0)
        model, vae, conditioner = build_components(cfg, seed)
        perturbed = {
            "model": perturb_constant_params(model, seed + 101),
            "vae": perturb_constant_params(vae, seed + 102),
            "conditioner": perturb_constant_params(conditioner, seed + 103),
        }
        tuning = tune_vae(vae, seed)
        tuning["perturbed_constant_params"] = {k: len(v) for k, v in perturbed.items()}
        tensors = state_dict_fp16(model, vae, conditioner)
        cfg_path, ckpt_path = write_folder(folder, cfg, tensors, seed)

        # ---- verify: official strict load from the written folder
        pipe = load_official(folder)
        loaded = safetensors.torch.load_file(ckpt_path)
        assert all(v.dtype == torch.float16 for v in loaded.values())
        prefixes = sorted({k.split(".")[0] for k in loaded})
        assert prefixes == ["conditioner", "model", "vae"], prefixes
        assert any(k.endswith("attention.attention.query.weight") for k in loaded)
        assert any(k.endswith("mlp.weights_in.weight") for k in loaded)
        n_params = {p: int(sum(v.numel() for k, v in loaded.items() if k.startswith(p + "."))) for p in prefixes}
        info = {
            "seed": seed,
            "config": cfg_path,
            "checkpoint": ckpt_path,
            "bytes": os.path.getsize(ckpt_path),
            "num_tensors": len(loaded),
            "params": n_params,
            "tuning": tuning,
        }
        if not args.no_check:
            checks = []
            for img in ("object_rgba.png", "plain_rgb.png", "soft_rgba.png"):
                p = os.path.join(IMAGES_DIR, img)
                if os.path.exists(p):
                    checks.append(check_surface(pipe, p, seed=1234))
            for c in checks:
                assert c["faces"] is not None and c["faces"] >= 1000, c
                assert 0.02 < c["frac_pos"] < 0.6, c
                assert c["logit_std"] > 5.0, c
            info["checks"] = checks
        summary[folder] = info
        print(json.dumps({folder: info}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
