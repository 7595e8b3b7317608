"""Mesh clean-up cost and effect per octree resolution: faces, pieces dropped, seconds per step, GLB bytes.

Makes raw marching-cubes surfaces two ways at each R and runs ``deployments.mesh_cleanup.clean_mesh`` on
them with the service's options (default: 40,000 faces, floaters removed):

- ``tiny``: the tiny checkpoint on the fixture images (fixed seeds, 5 steps). Its random weights give
  blobby surfaces, so it shows the clean-up on model output, not on realistic shapes.
- ``torus``: an analytic smooth field, a torus plus a speck (a ball of 0.3% of its area, a floater) in the
  official box: what a real-size model's smooth surface costs at the same R.

The area change and bounds shift compare the result with the same clean-up minus decimation, so they show
what decimation alone did to the shape (floater removal changes both on purpose).

CPU (the committed result, benchmarks/results/mesh_postprocess_cpu.md):
    .venv/bin/python benchmarks/mesh_postprocess.py --write benchmarks/results/mesh_postprocess_cpu.md
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import trimesh  # noqa: E402
from PIL import Image  # noqa: E402

from deployments.contract import DEFAULT_MAX_FACES, MeshOptions  # noqa: E402
from deployments.hunyuan3d import GenerationParams, ShapePipeline, StageTimings  # noqa: E402
from deployments.hunyuan3d.surface import extract_surface  # noqa: E402
from deployments.mesh_cleanup import FLOATER_AREA_FRACTION, STEPS, CleanupReport, clean_mesh  # noqa: E402
from deployments.mesh_io import export_mesh  # noqa: E402

DEFAULT_MODEL = REPO / "configs" / "models" / "tiny-Hunyuan3D-2" / "hunyuan3d-dit-v2-0"
IMAGES = REPO / "tests" / "fixtures" / "images"
LIBRARIES = ("trimesh", "fast-simplification", "numpy", "scipy", "scikit-image", "torch")
BOX_V = GenerationParams().box_v


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="released model folder (weights loaded)")
    p.add_argument("--resolutions", type=int, nargs="+", default=[128, 256, 384])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="image i gets seed + i")
    p.add_argument("--max-faces", type=int, default=DEFAULT_MAX_FACES, help="0: no reduction")
    p.add_argument("--keep-floaters", action="store_true", help="remove_floaters=False")
    p.add_argument("--repeats", type=int, default=3, help="clean-up runs per mesh (median seconds reported)")
    p.add_argument("--skip-model", action="store_true", help="analytic field only")
    p.add_argument("--write", type=Path, help="also write the markdown result to this file")
    return p.parse_args()


def load_images() -> list[tuple[str, Image.Image]]:
    images = []
    for path in sorted(IMAGES.glob("*.png")):
        with Image.open(path) as image:
            image.load()
            images.append((path.stem, image.copy()))
    return images


def torus_field(resolution: int) -> np.ndarray:
    """(R+1)^3 logits, positive inside: a torus (radii 0.6, 0.25) and a speck of radius 0.04 in its hole."""
    x = np.linspace(-BOX_V, BOX_V, resolution + 1, dtype=np.float32)
    X, Y, Z = np.meshgrid(x, x, x, indexing="ij")
    torus = 0.25 - np.sqrt((np.sqrt(X**2 + Z**2) - 0.6) ** 2 + Y**2)
    speck = 0.04 - np.sqrt(X**2 + Y**2 + Z**2)
    return np.maximum(torus, speck)


def raw_surfaces(
    pipeline: ShapePipeline | None, args: argparse.Namespace, resolution: int
) -> Iterator[tuple[str, trimesh.Trimesh | Exception, float]]:
    """(source, raw mesh or why there is none, marching-cubes seconds per mesh) for the torus, then each image."""
    field = torus_field(resolution)
    started = time.perf_counter()
    torus = extract_surface(field, 0.0, BOX_V, resolution)
    yield "torus", torus, time.perf_counter() - started
    if pipeline is None:
        return
    named = load_images()
    params = GenerationParams(num_inference_steps=args.steps, octree_resolution=resolution)
    timings = StageTimings()
    seeds = [args.seed + i for i in range(len(named))]
    meshes = pipeline.generate_shape_batch(
        [image for _, image in named], seeds, params, timings, return_exceptions=True
    )
    total = sum(timings.seconds.values())
    print(f"  tiny model R={resolution}: {len(named)} meshes in {total:.1f} s", flush=True)
    mc_s = timings.seconds["surface_extraction"] / len(named)  # the batch's marching cubes, shared out
    for (name, _), mesh in zip(named, meshes, strict=True):
        yield f"tiny {name}", mesh, mc_s


def measure(mesh: trimesh.Trimesh, options: MeshOptions, repeats: int) -> tuple[trimesh.Trimesh, CleanupReport]:
    """The cleaned mesh and its report, with the median seconds of ``repeats`` runs per step."""
    runs = [clean_mesh(mesh, options) for _ in range(repeats)]
    cleaned, report = runs[-1]
    seconds = {step: statistics.median(r.seconds[step] for _, r in runs) for step in STEPS}
    return cleaned, CleanupReport(**{**report.to_dict(), "seconds": seconds})


def row(source: str, resolution: int, mesh: trimesh.Trimesh, mc_s: float, options: MeshOptions, repeats: int) -> str:
    cleaned, report = measure(mesh, options, repeats)
    glb_before, glb_after = len(export_mesh(mesh, "glb")), len(export_mesh(cleaned, "glb"))
    # the shape change decimation made: against the same clean-up without it (floaters gone from both)
    reference, _ = clean_mesh(mesh, dataclasses.replace(options, max_faces=0))
    area = 100.0 * (cleaned.area / reference.area - 1.0) if reference.area else 0.0
    shift = np.abs(cleaned.bounds - reference.bounds).max() / reference.scale if len(cleaned.faces) else 0.0
    pieces = f"{report.components_found if report.components_found is not None else '-'}/{report.components_dropped}"
    steps = " | ".join(f"{report.seconds[s]:.3f}" for s in STEPS)
    watertight = "yes" if cleaned.is_watertight else "no"
    return (
        f"| {source} | {resolution} | {report.faces_before:,} | {report.faces_after:,} | {report.decimation_passes} "
        f"| {pieces} | {mc_s:.3f} | {steps} | {report.total_s:.3f} | {glb_before:,} | {glb_after:,} | "
        f"{glb_before / max(glb_after, 1):.1f}x | {area:+.3f} | {100.0 * shift:.3f} | {watertight} |"
    )


def machine() -> str:
    libraries = ", ".join(f"{name} {version(name)}" for name in LIBRARIES)
    return (
        f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), {platform.platform()}, "
        f"Python {platform.python_version()}, {torch.get_num_threads()} torch threads; {libraries}"
    )


def command() -> str:
    python = Path(sys.executable)
    shown = python.relative_to(REPO) if python.is_relative_to(REPO) else python
    return f"{shown} {shlex.join(sys.argv)}"


def main() -> None:
    args = parse_args()
    options = MeshOptions(max_faces=args.max_faces, remove_floaters=not args.keep_floaters)
    header = (
        "| source | R | faces before | faces after | decimation passes | pieces found/dropped | marching cubes s | "
        + " | ".join(f"{s} s" for s in STEPS)
        + " | clean-up s | GLB bytes before | GLB bytes after | GLB ratio | decimation area change % "
        "| decimation bounds shift % diag | watertight after |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    print(f"machine: {machine()}\noptions: {options}", flush=True)
    print("\n".join(lines), flush=True)
    pipeline = None if args.skip_model else ShapePipeline.from_pretrained(args.model)
    for resolution in args.resolutions:
        for source, mesh, mc_s in raw_surfaces(pipeline, args, resolution):
            if isinstance(mesh, Exception):
                line = f"| {source} | {resolution} | no surface: {mesh} |"
            else:
                line = row(source, resolution, mesh, mc_s, options, args.repeats)
            lines.append(line)
            print(line, flush=True)
    if args.write:
        when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        text = (
            "# Mesh clean-up after marching cubes: per R, tiny model and an analytic torus\n\n"
            f"Command: `{command()}`\n\n"
            f"Machine: {machine()}; run {when}.\n\n"
            f"Options: max_faces {options.max_faces}, remove_floaters {options.remove_floaters} "
            f"(floater cut: {FLOATER_AREA_FRACTION:.1%} of the largest piece's area); tiny model "
            f"{args.steps} steps, seeds {args.seed}.., hierarchical decoding; seconds are the median of "
            f"{args.repeats} clean-up runs.\n\n" + "\n".join(lines) + "\n"
        )
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(text)
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
