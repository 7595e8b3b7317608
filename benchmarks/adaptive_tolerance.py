"""How far ``volume_decoder="adaptive"`` (FlashVDM-class adaptive KV selection) lands from dense decoding.

Per image and resolution: the near-surface grid points (|logit| < 5 in the dense grid) whose inside/outside
label changes, the face-count difference and the symmetric Chamfer distance between the meshes (in voxels).
The tolerance stated in docs/operations.md ("Volume decoding and speed") comes from this script:

    .venv/bin/python benchmarks/adaptive_tolerance.py                      # tiny checkpoint, R = 128 and 256
    .venv/bin/python benchmarks/adaptive_tolerance.py --model /models/Hunyuan3D-2/hunyuan3d-dit-v2-0 --device cuda
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from PIL import Image  # noqa: E402
from scipy.spatial import cKDTree  # noqa: E402

from deployments.hunyuan3d import GenerationParams, ShapePipeline  # noqa: E402

DEFAULT_MODEL = REPO / "configs" / "models" / "tiny-Hunyuan3D-2" / "hunyuan3d-dit-v2-0"
NEAR_SURFACE_LOGIT = 5.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--images", type=Path, nargs="+", default=sorted((REPO / "tests/fixtures/images").glob("*.png")))
    p.add_argument("--resolutions", type=int, nargs="+", default=[128, 256])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    pipeline = ShapePipeline.from_pretrained(args.model, device=args.device)
    images = [Image.open(path) for path in args.images]
    seeds = list(range(len(images)))
    latents = pipeline.sample_latents(images, seeds, GenerationParams(num_inference_steps=args.steps))
    print("| R | image | flipped near-surface labels | faces dense -> adaptive | Chamfer (voxels) |")
    print("|---|---|---|---|---|")
    for resolution in args.resolutions:
        results = {}
        for decoder in ("dense", "adaptive"):
            params = GenerationParams(octree_resolution=resolution, num_chunks=65536, volume_decoder=decoder)
            volumes = pipeline.decode_volumes(latents, params)
            results[decoder] = (volumes, pipeline.extract_surfaces(volumes, params))
        voxel = 2 * params.box_v / (resolution + 1)
        for b, path in enumerate(args.images):
            dense, adaptive = results["dense"][0][b].dense(), results["adaptive"][0][b].dense()
            near = int((dense.abs() < NEAR_SURFACE_LOGIT).sum())
            flipped = int(((dense > 0) != (adaptive > 0)).sum())
            mesh_dense, mesh_adaptive = results["dense"][1][b], results["adaptive"][1][b]
            chamfer = (
                cKDTree(mesh_dense.vertices).query(mesh_adaptive.vertices)[0].mean()
                + cKDTree(mesh_adaptive.vertices).query(mesh_dense.vertices)[0].mean()
            ) / 2
            faces_dense, faces_adaptive = len(mesh_dense.faces), len(mesh_adaptive.faces)
            print(
                f"| {resolution} | {path.name} | {flipped} of {near} ({100 * flipped / near:.3f} %) | "
                f"{faces_dense} -> {faces_adaptive} ({100 * (faces_adaptive - faces_dense) / faces_dense:+.3f} %) | "
                f"{chamfer / voxel:.4f} |"
            )


if __name__ == "__main__":
    main()
