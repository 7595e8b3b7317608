"""`orfeas remove-background`: photos -> the RGBA cut-outs the model replica would reconstruct from.

The same decoding (EXIF orientation applied), mode decision and remover as the replica, without Ray or torch,
so an engineer can check a photo or a background model before a job fails with ``no_foreground``. Every
expected failure (missing file, not an image, bad option, unusable model, nothing left of an image) raises
:class:`CommandError` with a one-line reason; the CLI prints it and exits non-zero.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .contract import REMOVE_BACKGROUND_MODES, GenerationError, RemoveBackground
from .generate_command import CommandError

if TYPE_CHECKING:
    from PIL import Image

    from .background import BackgroundConfig

__all__ = ["CommandError", "RemoveBackgroundOptions", "add_remove_background_parser", "run_remove_background"]


@dataclass(frozen=True)
class RemoveBackgroundOptions:
    images: list[Path]
    out: Path
    remover: str = "classical"
    model: Path | None = None
    input_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    output: str = "probability"
    mode: RemoveBackground = "auto"


def add_remove_background_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("remove-background", help="cut photos out the way the model replica does (no Ray)")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    p.add_argument("--out", required=True, type=Path, help="output directory for <stem>.png (created if missing)")
    p.add_argument("--remover", default="classical", choices=("classical", "onnx"))
    p.add_argument("--model", type=Path, help="local .onnx file, for --remover onnx")
    p.add_argument("--input-size", type=int, help="the network's square input side (default: the model's own)")
    p.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"), help="default: ImageNet")
    p.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"), help="default: ImageNet")
    p.add_argument("--output", default="probability", choices=("probability", "logits"), help="BiRefNet: logits")
    p.add_argument(
        "--mode",
        default="auto",
        choices=REMOVE_BACKGROUND_MODES,
        help="auto (default): only images without a meaningful alpha channel, like a job's remove_background",
    )


def options_from_args(args: argparse.Namespace) -> RemoveBackgroundOptions:
    return RemoveBackgroundOptions(
        images=list(args.images),
        out=args.out,
        remover=args.remover,
        model=args.model,
        input_size=args.input_size,
        mean=tuple(args.mean) if args.mean else None,
        std=tuple(args.std) if args.std else None,
        output=args.output,
        mode=args.mode,
    )


def background_config(options: RemoveBackgroundOptions) -> BackgroundConfig:
    # numpy, OpenCV and pydantic load only when the command runs, so `orfeas --help` stays light
    from pydantic import ValidationError

    from .background import BackgroundConfig

    fields: dict[str, object] = {"remover": options.remover, "input_size": options.input_size}
    fields |= {"output": options.output, "onnx_model": str(options.model) if options.model else None}
    if options.mean is not None:
        fields["mean"] = options.mean
    if options.std is not None:
        fields["std"] = options.std
    try:
        return BackgroundConfig.model_validate(fields)
    except ValidationError as exc:
        # pydantic's text spans lines; the CLI promises one
        reasons = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise CommandError(f"bad option: {reasons}") from None


def load_image(path: Path) -> Image.Image:
    from .image_input import decode_image  # Pillow: a server dependency, loaded on use

    if not path.is_file():
        raise CommandError(f"{path}: no such file")
    try:
        return decode_image(path.read_bytes())
    except GenerationError as exc:
        raise CommandError(f"{path}: not a readable image ({exc.message})") from None


def run_remove_background(options: RemoveBackgroundOptions) -> list[Path]:
    """Write ``<out>/<stem>.png`` (RGBA, the input's size) per image; returns the written paths."""
    from .background import cut_out, make_remover

    config = background_config(options)
    images = [load_image(path) for path in options.images]
    try:
        remover = make_remover(config)
    except (FileNotFoundError, ValueError) as exc:
        raise CommandError(f"cannot load background model: {exc}") from None
    except Exception as exc:  # onnxruntime raises its own types for a file that is not a model
        reason = " ".join(str(exc).split())  # its messages can span lines
        raise CommandError(f"cannot load background model: {type(exc).__name__}: {reason}") from None

    options.out.mkdir(parents=True, exist_ok=True)
    outcomes = cut_out(images, [options.mode] * len(images), remover, config.min_foreground_fraction)
    written: list[Path] = []
    failures: list[str] = []
    for path, outcome in zip(options.images, outcomes, strict=True):
        if isinstance(outcome, GenerationError):
            failures.append(f"{path.name}: {outcome.code.value}: {outcome.message}")
            continue
        target = options.out / f"{path.stem}.png"
        outcome.save(target)
        written.append(target)
        alpha = outcome.getchannel("A")
        kept = sum(alpha.histogram()[128:]) / (alpha.width * alpha.height)
        print(f"{target}: {outcome.width}x{outcome.height}, object {kept:.1%} of the frame")
    if failures:
        raise CommandError("; ".join(failures))
    return written
