"""Compute reference outputs of the OFFICIAL hy3dgen 2.0.2 pipeline for the tiny checkpoints.

Runs in the REFERENCE venv (see tests/parity/README.md; the same venv as
make_tiny_checkpoints.py), never in the project venv:

    /tmp/refvenv/bin/python tests/parity/make_references.py

Inputs : configs/models/tiny-Hunyuan3D-2/<folder>/{config.yaml,model.fp16.safetensors}
         tests/fixtures/images/*.png
Outputs: tests/fixtures/parity/references.json   (cases, mesh stats, summaries, versions)
         tests/fixtures/parity/references.npz    (arrays, np.savez_compressed; keys in the JSON)

Everything is computed by the official code, loaded with
``Hunyuan3DDiTFlowMatchingPipeline.from_single_file(ckpt, config, device='cpu',
dtype=torch.float32, use_safetensors=True)`` and called as a user would.
Intermediate stages are captured WITHOUT changing any math: torch forward hooks on
the conditioner / DiT / DINOv2 modules, the pipeline's own ``callback`` argument for
per-step latents, and a pass-through wrapper around ``vae.volume_decoder`` that keeps a
copy of the grid logits it returns.  The only environment change is the pymeshlab
import stub (see _refenv.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np
import torch
from _refenv import IMAGES_DIR, MODEL_FOLDERS, PARITY_DIR, REPO_ROOT, TINY_ROOT, import_shapegen

IMAGES = ["object_rgba.png", "plain_rgb.png", "soft_rgba.png"]

COMMON = dict(
    num_inference_steps=5,
    guidance_scale=5.0,
    box_v=1.01,
    mc_level=0.0,
    num_chunks=8000,
)

# (case id, model folder, image, seed, octree_resolution, extras)
#   "stages": dump conditioner output, per-call DiT outputs, per-step latents, VAE tokens
#   "grid":   store the full dense grid logits (only used at R=32: 33^3 = 35937 floats)
#   "mesh_arrays": store the full final mesh vertices / faces
CASES = [
    ("v2-0_object_s0_r64", "hunyuan3d-dit-v2-0", "object_rgba.png", 0, 64, {"stages"}),
    ("v2-0_object_s0_r32", "hunyuan3d-dit-v2-0", "object_rgba.png", 0, 32, {"grid", "mesh_arrays"}),
    ("v2-0_plain_s1_r64", "hunyuan3d-dit-v2-0", "plain_rgb.png", 1, 64, set()),
    ("v2-0_soft_s2_r32", "hunyuan3d-dit-v2-0", "soft_rgba.png", 2, 32, set()),
    ("fast_object_s0_r64", "hunyuan3d-dit-v2-0-fast", "object_rgba.png", 0, 64, {"stages"}),
    ("fast_object_s0_r32", "hunyuan3d-dit-v2-0-fast", "object_rgba.png", 0, 32, {"grid"}),
    ("fast_plain_s1_r32", "hunyuan3d-dit-v2-0-fast", "plain_rgb.png", 1, 32, set()),
    ("fast_soft_s2_r64", "hunyuan3d-dit-v2-0-fast", "soft_rgba.png", 2, 64, set()),
]
# batched: all three images in ONE official call, one CPU generator per sample
BATCH_SEEDS = [0, 1, 2]
BATCH_RESOLUTION = 32
N_HEAD = 20  # first vertices / faces recorded in the JSON


def versions() -> dict:
    from importlib.metadata import version

    import cv2
    import diffusers
    import PIL
    import skimage
    import torchvision
    import transformers
    import trimesh

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "transformers": transformers.__version__,
        "diffusers": diffusers.__version__,
        "hy3dgen": version("hy3dgen"),
        "scikit-image": skimage.__version__,
        "trimesh": trimesh.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "pillow": PIL.__version__,
        "torch_num_threads": torch.get_num_threads(),
    }


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def summary(t) -> dict:
    a = t.detach().double().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=np.float64)
    return {
        "shape": list(a.shape),
        "mean": float(a.mean()),
        "std": float(a.std()),
        "min": float(a.min()),
        "max": float(a.max()),
        "abs_sum": float(np.abs(a).sum()),
    }


def grid_stats(g: torch.Tensor, level: float) -> dict:
    a = g.detach().double().cpu().numpy().ravel() - level
    absd = np.abs(a)
    return {
        "shape": list(g.shape),
        "std": float(a.std()),
        "min": float(a.min() + level),
        "max": float(a.max() + level),
        "frac_positive": float((a > 0).mean()),
        "min_abs_minus_level": float(absd.min()),
        "count_abs_lt_1e-4": int((absd < 1e-4).sum()),
        "count_abs_lt_1e-3": int((absd < 1e-3).sum()),
        "count_abs_lt_1e-2": int((absd < 1e-2).sum()),
    }


def mesh_stats(m) -> dict | None:
    if m is None:
        return None
    wt = bool(m.is_watertight)
    return {
        "num_vertices": len(m.vertices),
        "num_faces": len(m.faces),
        "area": float(m.area),
        "is_watertight": wt,
        "volume": float(m.volume) if wt else None,
        "euler_number": int(m.euler_number),
        "bounds": np.asarray(m.bounds, dtype=np.float64).tolist(),
        "centroid": np.asarray(m.centroid, dtype=np.float64).tolist(),
        "vertices_head": np.asarray(m.vertices[:N_HEAD], dtype=np.float64).tolist(),
        "faces_head": np.asarray(m.faces[:N_HEAD], dtype=np.int64).tolist(),
    }


def raw_stats(o) -> dict | None:
    """Latent2MeshOutput straight from skimage (before face reversal / trimesh)."""
    if o is None:
        return None
    return {
        "num_vertices": len(o.mesh_v),
        "num_faces": len(o.mesh_f),
        "vertices_dtype": str(o.mesh_v.dtype),
        "faces_dtype": str(o.mesh_f.dtype),
        "vertices_head": np.asarray(o.mesh_v[:N_HEAD], dtype=np.float64).tolist(),
        "faces_head": np.asarray(o.mesh_f[:N_HEAD], dtype=np.int64).tolist(),
    }


class GridRecorder:
    """Pass-through wrapper around the official volume decoder: calls it unchanged and
    keeps the returned grid logits."""

    def __init__(self, inner):
        self.inner = inner
        self.grids = []

    def __call__(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        self.grids.append(out.detach().clone())
        return out


def load_pipeline(folder: str):
    from hy3dgen.shapegen.pipelines import Hunyuan3DDiTFlowMatchingPipeline

    d = os.path.join(TINY_ROOT, folder)
    pipe = Hunyuan3DDiTFlowMatchingPipeline.from_single_file(
        os.path.join(d, "model.fp16.safetensors"),
        os.path.join(d, "config.yaml"),
        device="cpu",
        dtype=torch.float32,
        use_safetensors=True,
    )
    return pipe


def gens(seeds):
    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]


def open_image(name):
    from PIL import Image

    img = Image.open(os.path.join(IMAGES_DIR, name))
    img.load()
    return img


@torch.no_grad()
def run_case(pipe, case, arrays: dict) -> dict:
    from diffusers.utils.torch_utils import randn_tensor
    from hy3dgen.shapegen.pipelines import export_to_trimesh

    cid, folder, image_name, seed, res, extras = case
    out = {
        "id": cid,
        "model_folder": folder,
        "image": image_name,
        "seed": seed,
        "octree_resolution": res,
        **COMMON,
        "generator": "list of one torch.Generator('cpu').manual_seed(seed) per sample",
        "volume_decoder": type(pipe.vae.volume_decoder).__name__,
        "surface_extractor": type(pipe.vae.surface_extractor).__name__,
    }
    call = dict(COMMON, octree_resolution=res, enable_pbar=False)

    # ---- 1. latents (output_type='latent'), with stage capture if requested
    hooks, dit_calls, steps, dino_in = [], [], [], []
    cond_out = {}
    if "stages" in extras:

        def dit_hook(mod, args, kwargs, output):
            x, t, contexts = args[0], args[1], args[2]
            dit_calls.append(
                {
                    "x": x.detach().clone(),
                    "t": t.detach().clone(),
                    "guidance": None if kwargs.get("guidance") is None else kwargs["guidance"].detach().clone(),
                    "cond_main": contexts["main"].detach().clone(),
                    "out": output.detach().clone(),
                }
            )

        def cond_hook(mod, args, kwargs, output):
            cond_out["image_in"] = kwargs.get("image", args[0] if args else None).detach().clone()
            cond_out["main"] = output["main"].detach().clone()

        def dino_hook(mod, args, kwargs):
            px = args[0] if args else kwargs["pixel_values"]
            dino_in.append(px.detach().clone())

        hooks.append(pipe.model.register_forward_hook(dit_hook, with_kwargs=True))
        hooks.append(pipe.conditioner.register_forward_hook(cond_hook, with_kwargs=True))
        hooks.append(pipe.conditioner.main_image_encoder.model.register_forward_pre_hook(dino_hook, with_kwargs=True))

    def cb(step_idx, t, outputs):
        steps.append((int(step_idx), float(t), outputs.prev_sample.detach().clone()))

    latents = pipe(
        image=open_image(image_name),
        generator=gens([seed]),
        output_type="latent",
        callback=cb if "stages" in extras else None,
        callback_steps=1,
        **call,
    )
    for h in hooks:
        h.remove()
    assert isinstance(latents, torch.Tensor)
    out["latents"] = {"dtype": str(latents.dtype), **summary(latents)}
    out["latents_head"] = latents[0, :4].double().tolist()
    arrays[f"{cid}__latents"] = latents.float().numpy()

    # ---- 2. mesh: full official call with output_type='mesh' (raw marching cubes),
    #         then the official export_to_trimesh (face reversal + trimesh processing)
    rec = GridRecorder(pipe.vae.volume_decoder)
    pipe.vae.volume_decoder = rec
    try:
        raw = pipe(image=open_image(image_name), generator=gens([seed]), output_type="mesh", **call)
    finally:
        pipe.vae.volume_decoder = rec.inner
    out["raw_mc"] = raw_stats(raw[0])
    grid = rec.grids[0]
    out["grid"] = grid_stats(grid[0], COMMON["mc_level"])
    if "grid" in extras:
        arrays[f"{cid}__grid_logits"] = grid[0].float().numpy()
    meshes = export_to_trimesh(raw)
    m = meshes[0]
    out["mesh"] = mesh_stats(m)
    if "mesh_arrays" in extras and m is not None:
        arrays[f"{cid}__mesh_vertices"] = np.asarray(m.vertices, dtype=np.float32)
        arrays[f"{cid}__mesh_faces"] = np.asarray(m.faces, dtype=np.int32)

    # consistency: the default trimesh call gives the same mesh; the latent path matches
    tm = pipe(image=open_image(image_name), generator=gens([seed]), output_type="trimesh", **call)[0]
    out["trimesh_call_matches"] = bool(
        m is not None
        and len(tm.vertices) == len(m.vertices)
        and len(tm.faces) == len(m.faces)
        and np.array_equal(np.asarray(tm.faces), np.asarray(m.faces))
        and np.array_equal(np.asarray(tm.vertices), np.asarray(m.vertices))
    )

    # ---- 3. stages
    if "stages" in extras:
        st = {}
        img_in = cond_out["image_in"]  # (1, 3, 512, 512) in [-1, 1], the preprocessed image
        st["preprocessed_image"] = summary(img_in)
        st["preprocessed_image_channel_means"] = img_in[0].double().mean(dim=(1, 2)).tolist()
        st["dino_pixel_values"] = summary(dino_in[0])
        st["dino_pixel_values_sample_[0,:,259,::37]"] = dino_in[0][0, :, 259, ::37].double().tolist()
        arrays[f"{cid}__cond_main"] = cond_out["main"].float().numpy()
        st["cond_main"] = summary(cond_out["main"])
        st["cond_main_first_token_head"] = cond_out["main"][0, 0, :8].double().tolist()
        st["cond_main_last_token_head"] = cond_out["main"][0, -1, :8].double().tolist()
        # initial noise exactly as the pipeline draws it (diffusers randn_tensor, list of generators)
        noise = randn_tensor(
            (1, *pipe.vae.latent_shape), generator=gens([seed]), device=torch.device("cpu"), dtype=torch.float32
        )
        arrays[f"{cid}__initial_noise"] = noise.numpy()
        st["initial_noise"] = summary(noise)
        # per DiT call: timestep fed to the model, guidance, raw output (CFG: rows [cond; uncond])
        st["dit_calls"] = []
        for i, c in enumerate(dit_calls):
            st["dit_calls"].append(
                {
                    "t": c["t"].double().tolist(),
                    "t_dtype": str(c["t"].dtype),
                    "x_shape": list(c["x"].shape),
                    "cond_shape": list(c["cond_main"].shape),
                    "uncond_rows_all_zero": bool(
                        c["cond_main"].shape[0] == 2 * latents.shape[0]
                        and torch.all(c["cond_main"][latents.shape[0] :] == 0)
                    ),
                    "guidance": None if c["guidance"] is None else c["guidance"].double().tolist(),
                    "out": summary(c["out"]),
                }
            )
            arrays[f"{cid}__dit_out_{i}"] = c["out"].float().numpy()
        arrays[f"{cid}__dit_x_0"] = dit_calls[0]["x"].float().numpy()
        st["steps"] = [{"step_idx": s, "t": t, "prev_sample": summary(x)} for s, t, x in steps]
        arrays[f"{cid}__step_latents"] = torch.stack([x for _, _, x in steps]).float().numpy()
        st["scheduler_timesteps"] = pipe.scheduler.timesteps.double().tolist()
        st["scheduler_sigmas"] = pipe.scheduler.sigmas.double().tolist()
        # VAE token set for the final latents (latents / scale_factor -> post_kl -> transformer)
        z = pipe.vae(1.0 / pipe.vae.scale_factor * latents)
        arrays[f"{cid}__vae_tokens"] = z.float().numpy()
        st["vae_tokens"] = summary(z)
        st["vae_scale_factor"] = float(pipe.vae.scale_factor)
        out["stages"] = st
    return out


@torch.no_grad()
def run_batch(pipe, folder: str, tag: str, singles: dict, arrays: dict) -> dict:
    from hy3dgen.shapegen.pipelines import export_to_trimesh

    call = dict(COMMON, octree_resolution=BATCH_RESOLUTION, enable_pbar=False)
    images = [open_image(n) for n in IMAGES]
    lat = pipe(image=images, generator=gens(BATCH_SEEDS), output_type="latent", **call)
    cid = f"{tag}_batch3"
    arrays[f"{cid}__latents"] = lat.float().numpy()
    # the same samples one at a time (same seeds), to document official batch behaviour
    seq = torch.cat(
        [
            pipe(image=open_image(n), generator=gens([s]), output_type="latent", **call)
            for n, s in zip(IMAGES, BATCH_SEEDS, strict=True)
        ]
    )
    raw = pipe(image=[open_image(n) for n in IMAGES], generator=gens(BATCH_SEEDS), output_type="mesh", **call)
    meshes = export_to_trimesh(raw)
    res = {
        "id": cid,
        "model_folder": folder,
        "images": IMAGES,
        "seeds": BATCH_SEEDS,
        "octree_resolution": BATCH_RESOLUTION,
        **COMMON,
        "generator": "list of 3 torch.Generator('cpu').manual_seed(seed), one per sample, ONE call",
        "latents": {"dtype": str(lat.dtype), **summary(lat)},
        "batch_vs_sequential_max_abs_diff": float((lat - seq).abs().max()),
        "batch_vs_sequential_max_rel_diff": float((lat - seq).abs().max() / seq.abs().max()),
        "meshes": [mesh_stats(m) for m in meshes],
    }
    # compare with the single-image cases that used the same image / seed
    same = {}
    for k, v in singles.items():
        if k.startswith(tag + "_"):
            for i, (n, s) in enumerate(zip(IMAGES, BATCH_SEEDS, strict=True)):
                if v["image"] == n and v["seed"] == s:
                    same[k] = {
                        "batch_index": i,
                        "max_abs_diff": float(np.abs(arrays[f"{k}__latents"][0] - lat[i].numpy()).max()),
                    }
    res["vs_single_cases"] = same
    return res


def main() -> int:
    import_shapegen()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    os.makedirs(PARITY_DIR, exist_ok=True)

    arrays: dict = {}
    doc = {
        "description": "Reference outputs of the OFFICIAL hy3dgen 2.0.2 Hunyuan3DDiTFlowMatchingPipeline "
        "(fp32, CPU) for the tiny random checkpoints in configs/models/tiny-Hunyuan3D-2. "
        "Generated by tests/parity/make_references.py; arrays in references.npz under "
        "'<case id>__<name>'.",
        "versions": versions(),
        "load": "Hunyuan3DDiTFlowMatchingPipeline.from_single_file(<folder>/model.fp16.safetensors, "
        "<folder>/config.yaml, device='cpu', dtype=torch.float32, use_safetensors=True)",
        "images": {
            n: {
                "sha256": sha256(os.path.join(IMAGES_DIR, n)),
                "path": os.path.relpath(os.path.join(IMAGES_DIR, n), REPO_ROOT),
            }
            for n in IMAGES
        },
        "checkpoints": {
            f: {
                "sha256": sha256(os.path.join(TINY_ROOT, f, "model.fp16.safetensors")),
                "config_sha256": sha256(os.path.join(TINY_ROOT, f, "config.yaml")),
            }
            for f in MODEL_FOLDERS
        },
        "cases": {},
        "batched": {},
        "preprocess": {},
    }

    pipes = {}
    for folder in MODEL_FOLDERS:
        pipes[folder] = load_pipeline(folder)

    # preprocessing: store the exact preprocessed images (uint8-valued: x = u8/255*2-1)
    pipe0 = pipes[MODEL_FOLDERS[0]]
    for n in IMAGES:
        t_pil = pipe0.prepare_image(open_image(n))
        t_str = pipe0.prepare_image(os.path.join(IMAGES_DIR, n))
        img = t_pil["image"]
        u8 = torch.round((img[0] + 1) / 2 * 255).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        assert np.allclose(u8.astype(np.float32) / 255 * 2 - 1, img[0].permute(1, 2, 0).numpy(), atol=1e-6)
        key = n.replace(".png", "")
        arrays[f"preprocess_{key}__image_u8_hwc"] = u8
        arrays[f"preprocess_{key}__mask_u8_hw"] = (
            torch.round((t_pil["mask"][0, 0] + 1) / 2 * 255).to(torch.uint8).numpy()
        )
        doc["preprocess"][n] = {
            "image": summary(img),
            "mask": summary(t_pil["mask"]),
            "pil_vs_path_input_max_abs_diff": float((t_pil["image"] - t_str["image"]).abs().max()),
            "arrays": [f"preprocess_{key}__image_u8_hwc", f"preprocess_{key}__mask_u8_hw"],
        }

    for case in CASES:
        cid, folder = case[0], case[1]
        print(f"case {cid} ...", flush=True)
        doc["cases"][cid] = run_case(pipes[folder], case, arrays)
        m = doc["cases"][cid]["mesh"]
        print(
            f"  faces={m and m['num_faces']} verts={m and m['num_vertices']} "
            f"min|grid|={doc['cases'][cid]['grid']['min_abs_minus_level']:.3g}",
            flush=True,
        )

    for folder, tag in zip(MODEL_FOLDERS, ("v2-0", "fast"), strict=True):
        print(f"batch {tag} ...", flush=True)
        doc["batched"][tag] = run_batch(pipes[folder], folder, tag, doc["cases"], arrays)
        print(f"  batch vs sequential max abs diff {doc['batched'][tag]['batch_vs_sequential_max_abs_diff']:.3g}")

    doc["arrays"] = {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in sorted(arrays.items())}
    npz_path = os.path.join(PARITY_DIR, "references.npz")
    np.savez_compressed(npz_path, **arrays)
    json_path = os.path.join(PARITY_DIR, "references.json")
    with open(json_path, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=False)
        f.write("\n")
    print(f"wrote {json_path} ({os.path.getsize(json_path)} B), {npz_path} ({os.path.getsize(npz_path)} B)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
