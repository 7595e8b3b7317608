"""`orfeas generate`: images -> mesh files on this machine, with a per-stage timing summary.

For engineers checking a model folder or a parameter set without starting Ray. Every expected failure
(missing file, not an image, bad parameter, unusable model folder) raises :class:`CommandError` with a
one-line reason; the CLI prints it and exits non-zero.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .contract import DEFAULT_MAX_FACES, MESH_FORMATS, REMOVE_BACKGROUND_MODES, GenerationError, RemoveBackground
from .hunyuan3d.params import VOLUME_DECODERS
from .terminal import StatusLine

if TYPE_CHECKING:
    from PIL import Image


class CommandError(Exception):
    """A user error with a one-line explanation."""


@dataclass(frozen=True)
class GenerateOptions:
    images: list[Path]
    model: Path
    out: Path
    format: str = "glb"
    steps: int = 50
    guidance_scale: float = 5.0
    octree_resolution: int = 256
    decoder: str = "hierarchical"
    seed: int = 0
    batch: bool = False
    device: str = "cpu"
    max_faces: int = DEFAULT_MAX_FACES
    remove_floaters: bool = True
    remove_background: RemoveBackground = "auto"


def add_generate_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate", help="turn images into meshes locally (no Ray)")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    p.add_argument("--model", required=True, type=Path, help="released model folder (config.yaml + weights)")
    p.add_argument("--out", required=True, type=Path, help="output directory (created if missing)")
    p.add_argument("--format", default="glb", choices=MESH_FORMATS)
    p.add_argument("--steps", type=int, default=50, help="flow-matching steps (default 50)")
    p.add_argument("--guidance-scale", type=float, default=5.0)
    p.add_argument("--octree-resolution", type=int, default=256)
    p.add_argument("--decoder", default="hierarchical", choices=VOLUME_DECODERS)
    p.add_argument("--seed", type=int, default=0, help="seed of the first image; image i uses seed + i")
    p.add_argument("--batch", action="store_true", help="run all images through one batched pass")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument(
        "--max-faces", type=int, default=DEFAULT_MAX_FACES, help=f"face budget (default {DEFAULT_MAX_FACES}; 0: none)"
    )
    p.add_argument("--no-remove-floaters", dest="remove_floaters", action="store_false", help="keep floating pieces")
    p.add_argument(
        "--remove-background",
        default="auto",
        choices=REMOVE_BACKGROUND_MODES,
        help="auto (default): only for images without alpha; always; never (classical remover)",
    )


def options_from_args(args: argparse.Namespace) -> GenerateOptions:
    return GenerateOptions(
        images=list(args.images),
        model=args.model,
        out=args.out,
        format=args.format,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        octree_resolution=args.octree_resolution,
        decoder=args.decoder,
        seed=args.seed,
        batch=args.batch,
        device=args.device,
        max_faces=args.max_faces,
        remove_floaters=args.remove_floaters,
        remove_background=args.remove_background,
    )


def load_images(paths: list[Path]) -> list[Image.Image]:
    """Each file decoded as the service decodes uploads (EXIF orientation applied)."""
    from .image_input import decode_image  # Pillow: a server dependency, loaded on use

    images = []
    for path in paths:
        if not path.is_file():
            raise CommandError(f"{path}: no such file")
        try:
            images.append(decode_image(path.read_bytes()))
        except GenerationError as exc:
            raise CommandError(f"{path}: not a readable image ({exc.message})") from None
    return images


def run_generate(options: GenerateOptions) -> list[Path]:
    """Generate one mesh per image; returns the written paths and prints the timing summary."""
    # torch and the model load only here, so the rest of the CLI starts fast and without torch
    from .contract import MeshOptions
    from .hunyuan3d import (
        STAGES,
        CheckpointError,
        GenerationParams,
        ShapePipeline,
        StageTimings,
        UnsupportedModelError,
    )
    from .mesh_cleanup import clean_mesh
    from .mesh_io import export_mesh

    try:
        params = GenerationParams(
            num_inference_steps=options.steps,
            guidance_scale=options.guidance_scale,
            octree_resolution=options.octree_resolution,
            volume_decoder=options.decoder,  # type: ignore[arg-type]
        )
    except ValueError as exc:
        raise CommandError(f"bad parameter: {exc}") from None
    try:
        mesh_options = MeshOptions(max_faces=options.max_faces, remove_floaters=options.remove_floaters)
    except ValueError as exc:
        raise CommandError(f"bad parameter: {exc}") from None
    images = _cut_out(load_images(options.images), options)

    started = time.perf_counter()
    try:
        pipeline = ShapePipeline.from_pretrained(options.model, device=options.device)
    except (FileNotFoundError, CheckpointError, UnsupportedModelError, ValueError) as exc:
        raise CommandError(f"cannot load model: {exc}") from None
    load_seconds = time.perf_counter() - started

    seeds = [options.seed + i for i in range(len(images))]
    groups = [list(range(len(images)))] if options.batch else [[i] for i in range(len(images))]
    # on a terminal: `[1/2] cat.png: diffusion 33%` on stderr, rewritten as each stage starts
    line = StatusLine(sys.stderr)
    label = ""
    timings = StageTimings(on_stage=lambda stage: line.update(f"{label}: {stage_progress(stage, STAGES)}"))
    options.out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    failures: list[str] = []
    for number, group in enumerate(groups, start=1):
        label = f"[{number}/{len(groups)}] {', '.join(options.images[i].name for i in group)}"
        try:
            meshes = pipeline.generate_shape_batch(
                [images[i] for i in group], [seeds[i] for i in group], params, timings, return_exceptions=True
            )
        except ValueError as exc:  # e.g. a fully transparent image
            line.clear()
            failures.append(f"{', '.join(options.images[i].name for i in group)}: {exc}")
            continue
        line.clear()
        for i, mesh in zip(group, meshes, strict=True):
            if isinstance(mesh, Exception):
                failures.append(f"{options.images[i].name}: {mesh}")
                continue
            mesh, report = clean_mesh(mesh, mesh_options)
            path = options.out / f"{options.images[i].stem}.{options.format}"
            path.write_bytes(export_mesh(mesh, options.format))  # type: ignore[arg-type]
            written.append(path)
            print(f"{path}: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces (raw {report.faces_before})")

    print(format_timings(timings.seconds, load_seconds, len(images), options.batch))
    if failures:
        raise CommandError("; ".join(failures))
    return written


def _cut_out(images: list[Image.Image], options: GenerateOptions) -> list[Image.Image]:
    """The images with their backgrounds removed as ``--remove-background`` says (the classical remover)."""
    from .background import BackgroundConfig, cut_out, make_remover

    config = BackgroundConfig()
    modes: list[RemoveBackground] = [options.remove_background] * len(images)
    cut = cut_out(images, modes, make_remover(config), config.min_foreground_fraction)
    failures = [
        f"{path.name}: {item.message}"
        for path, item in zip(options.images, cut, strict=True)
        if isinstance(item, GenerationError)
    ]
    if failures:
        raise CommandError("; ".join(failures))
    return cut  # type: ignore[return-value]


def stage_progress(stage: str, stages: tuple[str, ...]) -> str:
    """``diffusion 33%``: the stage and the share of the pipeline's stages already done."""
    done = stages.index(stage) if stage in stages else len(stages)
    return f"{stage} {100 * done // len(stages)}%"


def format_timings(seconds: dict[str, float], load_seconds: float, count: int, batched: bool) -> str:
    lines = [
        f"timings ({count} image(s), {'one batch' if batched else 'one at a time'}; model load {load_seconds:.2f} s)"
    ]
    total = sum(seconds.values())
    for stage, value in seconds.items():
        lines.append(f"  {stage:<20} {value:8.3f} s  {value / count:8.3f} s/image")
    lines.append(f"  {'total':<20} {total:8.3f} s  {total / max(count, 1):8.3f} s/image")
    return "\n".join(lines)
