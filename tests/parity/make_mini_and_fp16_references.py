"""Tiny mini-turbo-style checkpoint + official references at a non-518 DINOv2 size, and fp16 references.

Runs in the REFERENCE venv (see tests/parity/README.md), never in the project venv:

    /tmp/refvenv/bin/python tests/parity/make_mini_and_fp16_references.py

Writes:
    configs/models/tiny-Hunyuan3D-2/hunyuan3d-dit-v2-mini-turbo/{config.yaml,model.fp16.safetensors}
    tests/fixtures/parity/numerics.json + numerics.npz

1. The tiny ``hunyuan3d-dit-v2-mini-turbo`` folder: built with the OFFICIAL classes through the helpers of
   make_tiny_checkpoints.py, in the released layout, with what makes the mini-turbo config different from
   v2-0: DINOv2 (patch 14, position embeddings for 518 px = 37x37) conditioning at 1022 px, so 73x73 + 1 =
   5,330 tokens through interpolated position embeddings; ``border_ratio: 0``; the consistency (PCM) scheduler
   with ``pcm_timesteps: 100``; ``guidance_embed: true``; a smaller latent set (mini: 512 of 3072 -> 64 here).
2. Official fp32 references on it: conditioner tokens at 1022 px and at an odd size (601 px: 42x42 patches,
   the conv drops the remainder), latents and the mesh (stats + full arrays).
3. fp16 references: the official pipeline loaded with ``dtype=torch.float16`` (CPU; torch 2.5.1 runs every op
   of it in fp16) on the existing tiny v2-0 checkpoint, next to the same call in fp32 so the tests can size
   their tolerance on the official code's own fp16 error.

No hy3dgen math is changed; the only environment change is the pymeshlab stub (see _refenv.py).
"""

from __future__ import annotations

import copy
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np
import torch
from _refenv import PARITY_DIR, TINY_ROOT, import_shapegen
from make_references import COMMON, GridRecorder, gens, grid_stats, mesh_stats, open_image, sha256, summary, versions
from make_tiny_checkpoints import (
    SEED,
    base_config,
    build_components,
    check_surface,
    load_official,
    perturb_constant_params,
    state_dict_fp16,
    tune_vae,
    write_folder,
)

MINI_FOLDER = "hunyuan3d-dit-v2-mini-turbo"
MINI_SEED = SEED + 2
MINI_IMAGE_SIZE = 1022  # 73 x 73 patches + CLS = 5,330 tokens
ODD_IMAGE_SIZE = 601  # 42 x 42 patches; 601 is no multiple of 14
TOKEN_STRIDE = 13  # the JSON/npz keep every 13th token (all rows of the interpolation grid are hit)
FP16_FOLDER = "hunyuan3d-dit-v2-0"
FP16_CASE = ("v2-0_object_s0_r64", "object_rgba.png", 0, 64)
MINI_CASE = ("mini-turbo_object_s0_r64", "object_rgba.png", 0, 64)


def mini_turbo_config() -> dict:
    cfg = base_config(guidance_embed=True)
    cfg["model"]["params"]["depth"] = 1  # mini halves the double blocks (8 of 16) ...
    cfg["vae"]["params"]["num_latents"] = 64  # ... and the latent set (512 of 3072)
    cfg["vae"]["params"]["scale_factor"] = 1.0188137142395404  # the real mini VAE's
    kwargs = cfg["conditioner"]["params"]["main_image_encoder"]["kwargs"]
    kwargs["image_size"] = MINI_IMAGE_SIZE  # the DINOv2 config keeps image_size 518: embeddings interpolate
    cfg["scheduler"] = {
        "target": "hy3dgen.shapegen.schedulers.ConsistencyFlowMatchEulerDiscreteScheduler",
        "params": {"num_train_timesteps": 1000, "pcm_timesteps": 100},
    }
    cfg["image_processor"]["params"]["border_ratio"] = 0.0
    return cfg


def build_mini_turbo() -> dict:
    cfg = mini_turbo_config()
    model, vae, conditioner = build_components(cfg, MINI_SEED)
    for offset, module in ((101, model), (102, vae), (103, conditioner)):
        perturb_constant_params(module, MINI_SEED + offset)
    tuning = tune_vae(vae, MINI_SEED)
    tensors = state_dict_fp16(model, vae, conditioner)
    cfg_path, ckpt_path = write_folder(MINI_FOLDER, cfg, tensors, MINI_SEED)
    with open(cfg_path) as f:  # the shared header names the v2-0 repository and script
        text = f.read()
    text = text.replace("tencent/Hunyuan3D-2/", "tencent/Hunyuan3D-2mini/").replace(
        "tests/parity/make_tiny_checkpoints.py", "tests/parity/make_mini_and_fp16_references.py"
    )
    with open(cfg_path, "w") as f:
        f.write(text)
    os.chmod(ckpt_path, 0o644)  # safetensors writes 0600; the other tiny checkpoints are 0644
    pipe = load_official(MINI_FOLDER)  # strict official load of what was written
    check = check_surface(pipe, os.path.join(os.path.dirname(PARITY_DIR), "images", "object_rgba.png"), 1234)
    assert check["faces"] is not None and check["faces"] >= 1000, check
    return {
        "seed": MINI_SEED,
        "bytes": os.path.getsize(ckpt_path),
        "params": {
            p: int(sum(v.numel() for k, v in tensors.items() if k.startswith(p + ".")))
            for p in ("model", "vae", "conditioner")
        },
        "tuning": tuning,
        "check": check,
    }


def pos_embed_paths_differ(pipe) -> dict:
    """How far the transformers-4.4x-and-later ``size=`` interpolation is from the older ``scale_factor=(n+0.1)/37``
    one on these position embeddings: the parity tolerance must be far below it for the test to tell them apart."""
    embeddings = pipe.conditioner.main_image_encoder.model.embeddings
    grid = embeddings.position_embeddings[:, 1:].float()
    side = round(grid.shape[1] ** 0.5)
    grid = grid.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    out = {}
    for size in (MINI_IMAGE_SIZE, ODD_IMAGE_SIZE):
        n = size // 14
        by_size = torch.nn.functional.interpolate(grid, size=(n, n), mode="bicubic", align_corners=False)
        by_scale = torch.nn.functional.interpolate(
            grid, scale_factor=((n + 0.1) / side, (n + 0.1) / side), mode="bicubic", align_corners=False
        )
        out[str(size)] = float((by_size - by_scale).abs().max())
    return out


@torch.no_grad()
def conditioner_references(pipe, arrays: dict) -> dict:
    """Official ``DinoImageEncoder`` outputs for the preprocessed object image at 1022 and at the odd size."""
    from hy3dgen.shapegen.models.conditioner import DinoImageEncoder

    pixels = pipe.prepare_image(open_image("object_rgba.png"))["image"]  # (1, 3, 512, 512) in [-1, 1]
    arrays["conditioner__pixels"] = pixels.float().numpy()
    weights = pipe.conditioner.main_image_encoder.state_dict()
    dinov2 = mini_turbo_config()["conditioner"]["params"]["main_image_encoder"]["kwargs"]["config"]
    out = {}
    for size in (MINI_IMAGE_SIZE, ODD_IMAGE_SIZE):
        encoder = DinoImageEncoder(config=copy.deepcopy(dinov2), image_size=size, use_cls_token=True)
        encoder.load_state_dict(weights)
        tokens = encoder(pixels)
        if size == MINI_IMAGE_SIZE:  # the pipeline's own encoder gives the same
            assert torch.equal(tokens, pipe.conditioner(image=pixels)["main"])
        arrays[f"conditioner_{size}__tokens_strided"] = tokens[:, ::TOKEN_STRIDE].float().numpy()
        out[str(size)] = {"num_tokens": tokens.shape[1], "token_stride": TOKEN_STRIDE, "tokens": summary(tokens)}
    return out


@torch.no_grad()
def pipeline_case(pipe, case: tuple, arrays: dict, tag: str, with_mesh: bool = True) -> dict:
    from hy3dgen.shapegen.pipelines import export_to_trimesh

    cid, image_name, seed, resolution = case
    call = dict(COMMON, octree_resolution=resolution, enable_pbar=False)
    ts, inputs = [], []

    def record(module, args, kwargs, output):
        ts.append(args[1].double().tolist())
        inputs.append(args[0][:1].detach().clone())

    hook = pipe.model.register_forward_hook(record, with_kwargs=True)
    latents = pipe(image=open_image(image_name), generator=gens([seed]), output_type="latent", **call)
    hook.remove()
    arrays[f"{tag}__latents"] = latents.float().numpy()
    # the noise as the pipeline drew it: randn_tensor draws in the model dtype, and torch's fp16 draw is a
    # different sequence from its fp32 one (so the official fp16 and fp32 runs start from different noise)
    arrays[f"{tag}__initial_noise"] = inputs[0].float().numpy()
    if with_mesh is False:
        return {"id": cid, "dtype": str(pipe.dtype), "latents": {"dtype": str(latents.dtype), **summary(latents)}}
    recorder = GridRecorder(pipe.vae.volume_decoder)
    pipe.vae.volume_decoder = recorder
    try:
        raw = pipe(image=open_image(image_name), generator=gens([seed]), output_type="mesh", **call)
    finally:
        pipe.vae.volume_decoder = recorder.inner
    mesh = export_to_trimesh(raw)[0]
    arrays[f"{tag}__mesh_vertices"] = np.asarray(mesh.vertices, dtype=np.float32)
    arrays[f"{tag}__mesh_faces"] = np.asarray(mesh.faces, dtype=np.int32)
    return {
        "id": cid,
        "image": image_name,
        "seed": seed,
        "octree_resolution": resolution,
        **COMMON,
        "dtype": str(pipe.dtype),
        "dit_t": ts,
        "latents": {"dtype": str(latents.dtype), **summary(latents)},
        "grid": grid_stats(recorder.grids[0][0].float(), COMMON["mc_level"]),
        "mesh": mesh_stats(mesh),
    }


@torch.no_grad()
def per_call_errors(fp32, fp16) -> dict:
    """The official code's own fp16 error per stage, on identical inputs (documentation for the tolerances)."""
    pixels = fp32.prepare_image(open_image("object_rgba.png"))["image"]
    cond = fp32.conditioner(image=pixels)["main"]
    cond16 = fp16.conditioner(image=pixels.half())["main"]
    x = torch.randn((2, *fp32.vae.latent_shape), generator=torch.Generator().manual_seed(7))
    context = torch.cat([cond, torch.zeros_like(cond)])
    dit = {}
    for t in (0.0, 0.5, 1.0):
        tt = torch.full((2,), t)
        v32 = fp32.model(x, tt, {"main": context})
        v16 = fp16.model(x.half(), tt.half(), {"main": context.half()})
        dit[str(t)] = {"max_abs_diff": float((v32 - v16.float()).abs().max()), "max_abs": float(v32.abs().max())}
    return {
        "conditioner": {"max_abs_diff": float((cond - cond16.float()).abs().max()), "max_abs": float(cond.abs().max())},
        "dit_same_inputs": dit,
    }


def load_fp16(folder: str):
    from hy3dgen.shapegen.pipelines import Hunyuan3DDiTFlowMatchingPipeline

    d = os.path.join(TINY_ROOT, folder)
    return Hunyuan3DDiTFlowMatchingPipeline.from_single_file(
        os.path.join(d, "model.fp16.safetensors"),
        os.path.join(d, "config.yaml"),
        device="cpu",
        dtype=torch.float16,
        use_safetensors=True,
    )


def main() -> int:
    import_shapegen()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    arrays: dict = {}
    doc: dict = {
        "description": "Official hy3dgen 2.0.2 references for the tiny mini-turbo-style checkpoint (DINOv2 at "
        "1022 px, consistency scheduler) and fp16 references on the tiny v2-0 checkpoint. Generated by "
        "tests/parity/make_mini_and_fp16_references.py; arrays in numerics.npz.",
        "versions": versions(),
    }
    doc["mini_turbo_checkpoint"] = build_mini_turbo()
    mini = load_official(MINI_FOLDER)
    doc["checkpoints"] = {
        f: sha256(os.path.join(TINY_ROOT, f, "model.fp16.safetensors")) for f in (MINI_FOLDER, FP16_FOLDER)
    }
    doc["pos_embed_size_vs_scale_factor_max_abs_diff"] = pos_embed_paths_differ(mini)
    doc["conditioner"] = conditioner_references(mini, arrays)
    doc["mini_turbo"] = pipeline_case(mini, MINI_CASE, arrays, "mini_turbo")
    print("mini-turbo", doc["mini_turbo"]["mesh"]["num_faces"], "faces", flush=True)

    fp32 = load_official(FP16_FOLDER)
    fp16 = load_fp16(FP16_FOLDER)
    doc["fp16"] = pipeline_case(fp16, FP16_CASE, arrays, "fp16")
    twin: dict = {}
    pipeline_case(fp32, FP16_CASE, twin, "twin", with_mesh=False)
    # large: the two runs start from different noise (see pipeline_case)
    doc["official_fp16_vs_fp32_latents_max_abs_diff"] = float(
        np.abs(arrays["fp16__latents"] - twin["twin__latents"]).max()
    )
    doc["official_fp16_vs_fp32_per_call"] = per_call_errors(fp32, fp16)
    print("official fp16 vs fp32", doc["official_fp16_vs_fp32_per_call"], flush=True)

    doc["arrays"] = {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in sorted(arrays.items())}
    np.savez_compressed(os.path.join(PARITY_DIR, "numerics.npz"), **arrays)
    with open(os.path.join(PARITY_DIR, "numerics.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
