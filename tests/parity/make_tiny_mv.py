"""Tiny Hunyuan3D-2mv checkpoint + reference outputs of the OFFICIAL multiview pipeline.

Runs in the REFERENCE venv (see tests/parity/README.md), never in the project venv:

    /tmp/refvenv/bin/python tests/parity/make_tiny_mv.py

The PyPI hy3dgen 2.0.2 already ships the multiview classes (``preprocessors.MVImageProcessorV2``,
``models.conditioner.DinoImageEncoderMV``), so they are imported from it; ``references_mv.json`` records
where they came from.

Writes:
    configs/models/tiny-Hunyuan3D-2/hunyuan3d-dit-v2-mv/{config.yaml,model.fp16.safetensors}
    tests/fixtures/parity/references_mv.json   (cases, mesh stats, versions, sha256 of every input)
    tests/fixtures/parity/references_mv.npz    (arrays; keys listed in the JSON)

The checkpoint is the tiny v2-0 recipe (``make_tiny_checkpoints.py``: same sizes, same seed, same
perturbation and VAE tuning) with the released 2mv conditioner and image processor: the real 2mv DiT and VAE
have the v2-0 architecture, and ``DinoImageEncoderMV`` adds no weights (its view embedding is a fixed sin-cos
table). It is built by the official classes from the written config; ``references_mv.json`` records whether
it came out byte-identical to the tiny v2-0 file (here it did not: one fp16 value of one DINOv2 tensor is one
ulp apart, from the init's arithmetic on this CPU, so it is committed as its own file).
"""

from __future__ import annotations

import copy
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np
import torch
from _refenv import IMAGES_DIR, PARITY_DIR, TINY_ROOT, import_shapegen
from make_references import IMAGES, gens, mesh_stats, open_image, sha256, summary, versions
from make_tiny_checkpoints import (
    SEED,
    base_config,
    build_components,
    load_official,
    perturb_constant_params,
    state_dict_fp16,
    tune_vae,
    write_folder,
)

FOLDER = "hunyuan3d-dit-v2-mv"
VIEW_NUM = 4
COMMON = dict(num_inference_steps=5, guidance_scale=5.0, box_v=1.01, mc_level=0.0, num_chunks=8000)
RESOLUTION = 32
TOKEN_STRIDE = 37  # tokens 0 (CLS), 37, ..., 1369 of every view are stored in full

# View sets, as {view: fixture image}, in the order a user might name them (NOT model order, on purpose).
# ``right`` repeats the front image: the two blocks of tokens then differ only by the view embedding.
VIEW_SETS = {
    "front_back": {"back": "plain_rgb.png", "front": "object_rgba.png"},
    "front_left_right": {"right": "object_rgba.png", "front": "object_rgba.png", "left": "soft_rgba.png"},
    "all4": {"front": "object_rgba.png", "left": "soft_rgba.png", "back": "plain_rgb.png", "right": "object_rgba.png"},
    "all4_other_images": {
        "left": "object_rgba.png",
        "right": "plain_rgb.png",
        "back": "object_rgba.png",
        "front": "soft_rgba.png",
    },
}
LATENT_CASE = ("all4", 0)  # (view set, seed): latents and mesh
# two jobs with the same view set (other images, other seed) in ONE official call
BATCH = [("all4", 0), ("all4_other_images", 1)]


def mv_config() -> dict:
    cfg = base_config(guidance_embed=False)
    encoder = cfg["conditioner"]["params"]["main_image_encoder"]
    encoder["type"] = "DinoImageEncoderMV"
    encoder["kwargs"]["view_num"] = VIEW_NUM
    cfg["image_processor"]["target"] = "hy3dgen.shapegen.preprocessors.MVImageProcessorV2"
    return cfg


def views_of(name: str) -> dict:
    return {view: open_image(image) for view, image in VIEW_SETS[name].items()}


def build_checkpoint() -> dict:
    import safetensors.torch

    cfg = mv_config()
    model, vae, conditioner = build_components(copy.deepcopy(cfg), SEED)
    perturb_constant_params(model, SEED + 101)
    perturb_constant_params(vae, SEED + 102)
    perturb_constant_params(conditioner, SEED + 103)
    tune_vae(vae, SEED)
    tensors = state_dict_fp16(model, vae, conditioner)
    cfg_path, ckpt_path = write_folder(FOLDER, cfg, tensors, SEED)
    loaded = safetensors.torch.load_file(ckpt_path)
    assert sorted({k.split(".")[0] for k in loaded}) == ["conditioner", "model", "vae"]
    assert not any("view_embed" in k for k in loaded), "the view embedding is not a weight upstream"
    v2_0 = os.path.join(TINY_ROOT, "hunyuan3d-dit-v2-0", "model.fp16.safetensors")
    return {
        "seed": SEED,
        "config_sha256": sha256(cfg_path),
        "sha256": sha256(ckpt_path),
        "bytes": os.path.getsize(ckpt_path),
        "identical_to_tiny_v2_0_weights": sha256(ckpt_path) == sha256(v2_0),
    }


@torch.no_grad()
def conditioner_case(pipe, name: str, arrays: dict) -> dict:
    """The official encode path: prepare_image (MVImageProcessorV2) -> conditioner(image, view_idxs)."""
    cond_inputs = pipe.prepare_image(views_of(name))
    image = cond_inputs.pop("image")  # (1, V, 3, 512, 512)
    tokens = pipe.conditioner(image=image, **cond_inputs)["main"]  # (1, V * 1370, 48)
    uncond = pipe.conditioner.unconditional_embedding(1, **cond_inputs)["main"]
    views = len(cond_inputs["view_idxs"][0])
    per_view = tokens.view(1, views, -1, tokens.shape[-1])
    arrays[f"mv_{name}__tokens_strided"] = per_view[:, :, ::TOKEN_STRIDE].float().numpy()
    arrays[f"mv_{name}__tokens_view_sums"] = per_view.double().sum(dim=(2, 3)).numpy()
    return {
        "views": VIEW_SETS[name],
        "view_idxs": [list(map(int, idx)) for idx in cond_inputs["view_idxs"]],
        "image_shape": list(image.shape),
        "tokens": summary(tokens),
        "uncond_shape": list(uncond.shape),
        "uncond_all_zero": bool(torch.all(uncond == 0)),
        "token_stride": TOKEN_STRIDE,
        "arrays": [f"mv_{name}__tokens_strided", f"mv_{name}__tokens_view_sums"],
    }


@torch.no_grad()
def latent_case(pipe, arrays: dict) -> dict:
    from hy3dgen.shapegen.pipelines import export_to_trimesh

    name, seed = LATENT_CASE
    call = dict(COMMON, octree_resolution=RESOLUTION, enable_pbar=False)
    latents = pipe(image=views_of(name), generator=gens([seed]), output_type="latent", **call)
    arrays["mv_latents"] = latents.float().numpy()
    raw = pipe(image=views_of(name), generator=gens([seed]), output_type="mesh", **call)
    mesh = export_to_trimesh(raw)[0]
    arrays["mv_mesh_vertices"] = np.asarray(mesh.vertices, dtype=np.float32)
    arrays["mv_mesh_faces"] = np.asarray(mesh.faces, dtype=np.int32)
    return {
        "view_set": name,
        "views": VIEW_SETS[name],
        "seed": seed,
        "octree_resolution": RESOLUTION,
        **COMMON,
        "generator": "list of one torch.Generator('cpu').manual_seed(seed)",
        "volume_decoder": type(pipe.vae.volume_decoder).__name__,
        "latents": summary(latents),
        "mesh": mesh_stats(mesh),
        "arrays": ["mv_latents", "mv_mesh_vertices", "mv_mesh_faces"],
    }


@torch.no_grad()
def batch_case(pipe, arrays: dict) -> dict:
    call = dict(COMMON, octree_resolution=RESOLUTION, enable_pbar=False)
    jobs = [views_of(name) for name, _ in BATCH]
    seeds = [seed for _, seed in BATCH]
    # the official batch concatenates the jobs' views: one view count per call
    latents = pipe(image=jobs, generator=gens(seeds), output_type="latent", **call)
    arrays["mv_batch2_latents"] = latents.float().numpy()
    return {"jobs": [{"view_set": n, "views": VIEW_SETS[n], "seed": s} for n, s in BATCH], **COMMON}


def main() -> int:
    shapegen = import_shapegen()
    from hy3dgen.shapegen.models import conditioner as official_conditioner
    from hy3dgen.shapegen.preprocessors import MVImageProcessorV2

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    checkpoint = build_checkpoint()
    pipe = load_official(FOLDER)
    assert isinstance(pipe.image_processor, MVImageProcessorV2)
    assert isinstance(pipe.conditioner.main_image_encoder, official_conditioner.DinoImageEncoderMV)

    arrays: dict = {}
    doc = {
        "description": "Reference outputs of the OFFICIAL hy3dgen 2.0.2 multiview path (MVImageProcessorV2 + "
        "DinoImageEncoderMV inside Hunyuan3DDiTFlowMatchingPipeline, fp32, CPU) for the tiny 2mv checkpoint. "
        "Generated by tests/parity/make_tiny_mv.py; arrays in references_mv.npz.",
        "versions": versions(),
        "official_classes": {
            "MVImageProcessorV2": MVImageProcessorV2.__module__,
            "DinoImageEncoderMV": official_conditioner.DinoImageEncoderMV.__module__,
            "source": os.path.dirname(shapegen.__file__),
            "from": "the PyPI hy3dgen 2.0.2 wheel (it contains both classes)",
        },
        "checkpoint": {FOLDER: checkpoint},
        "images": {n: sha256(os.path.join(IMAGES_DIR, n)) for n in sorted(IMAGES)},
        "conditioner": {
            name: conditioner_case(pipe, name, arrays) for name in ("front_back", "front_left_right", "all4")
        },
        "latents": latent_case(pipe, arrays),
        "batched": batch_case(pipe, arrays),
    }
    doc["arrays"] = {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in sorted(arrays.items())}
    os.makedirs(PARITY_DIR, exist_ok=True)
    npz_path = os.path.join(PARITY_DIR, "references_mv.npz")
    np.savez_compressed(npz_path, **arrays)
    json_path = os.path.join(PARITY_DIR, "references_mv.json")
    with open(json_path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(json.dumps(doc["checkpoint"], indent=1))
    print(json.dumps(doc["latents"]["mesh"]["num_faces"]))
    print(f"wrote {json_path} ({os.path.getsize(json_path)} B), {npz_path} ({os.path.getsize(npz_path)} B)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
