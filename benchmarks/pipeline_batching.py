"""Per-stage cost of the batched shape pipeline: B = 1, 4, 8 and dense vs hierarchical decoding.

Runs the pipeline in-process (no Ray) and prints, per decoder and resolution, the seconds per item of each
stage and the per-item speed-up of batch B over B = 1, all measured side by side in one run.

CPU, tiny checkpoint (the committed default):
    .venv/bin/python benchmarks/pipeline_batching.py
Real-size architecture with random weights on a GPU:
    python benchmarks/pipeline_batching.py --variant hunyuan3d-dit-v2-0 --device cuda --dtype fp16 \
        --steps 50 5 --resolutions 256 380 --batch-sizes 1 4 8
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from deployments.hunyuan3d import STAGES, GenerationParams, ShapePipeline, StageTimings  # noqa: E402

DEFAULT_MODEL = REPO / "configs" / "models" / "tiny-Hunyuan3D-2" / "hunyuan3d-dit-v2-0"
IMAGES = REPO / "tests" / "fixtures" / "images"
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# column labels of the stages in the printed tables
STAGE_LABELS = {
    "preprocess": "prep",
    "conditioner": "cond",
    "diffusion": "diff",
    "vae": "vae",
    "volume_decoding": "volume",
    "surface_extraction": "surface",
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="released model folder (weights loaded)")
    p.add_argument("--variant", help="build this architecture with random weights instead (e.g. hunyuan3d-dit-v2-0)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: fp16 on cuda, fp32 on cpu")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--resolutions", type=int, nargs="+", default=[64, 128])
    p.add_argument("--decoders", nargs="+", default=["dense", "hierarchical"])
    p.add_argument("--steps", type=int, nargs="+", default=[5])
    p.add_argument("--repeats", type=int, default=1, help="timed runs per cell (median reported)")
    p.add_argument("--num-chunks", type=int, default=65536, help="query points per geometry-decoder call")
    return p.parse_args()


def load_images(count: int) -> list[Image.Image]:
    names = sorted(IMAGES.glob("*.png"))
    images = []
    for i in range(count):
        with Image.open(names[i % len(names)]) as image:
            image.load()
            images.append(image.copy())
    return images


def measure(pipeline: ShapePipeline, batch: int, params: GenerationParams, repeats: int) -> dict[str, float]:
    """Median seconds per stage for one batch of `batch` images."""
    images, seeds = load_images(batch), list(range(batch))
    runs = []
    for _ in range(repeats):
        timings = StageTimings()
        pipeline.generate_shape_batch(images, seeds, params, timings, return_exceptions=True)
        runs.append(timings.seconds)
    return {stage: statistics.median(run.get(stage, 0.0) for run in runs) for stage in STAGES}


def main() -> None:
    args = parse_args()
    dtype = DTYPES[args.dtype] if args.dtype else None
    started = time.perf_counter()
    if args.variant:
        pipeline = ShapePipeline.from_config(args.variant, seed=0, device=args.device, dtype=dtype)
        model_name = f"{args.variant} (random weights)"
    else:
        pipeline = ShapePipeline.from_pretrained(args.model, device=args.device, dtype=dtype)
        model_name = str(args.model.relative_to(REPO) if args.model.is_relative_to(REPO) else args.model)
    load_s = time.perf_counter() - started
    print(f"model: {model_name}; device {args.device}, dtype {pipeline.dtype}; loaded in {load_s:.1f} s")
    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}" + (f", {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else "")
    )
    # warm-up: first calls pay for allocator growth and kernel selection
    measure(pipeline, 1, GenerationParams(num_inference_steps=2, octree_resolution=32, volume_decoder="dense"), 1)

    header = (
        "| steps | decoder | R | B | "
        + " | ".join(f"{STAGE_LABELS[s]} s/item" for s in STAGES)
        + " | total s/item | per-item speed-up vs B=1 |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for steps in args.steps:
        for decoder in args.decoders:
            for resolution in args.resolutions:
                params = GenerationParams(
                    num_inference_steps=steps,
                    octree_resolution=resolution,
                    volume_decoder=decoder,
                    num_chunks=args.num_chunks,
                )
                baseline = None
                for batch in args.batch_sizes:
                    seconds = measure(pipeline, batch, params, args.repeats)
                    per_item = {s: v / batch for s, v in seconds.items()}
                    total = sum(per_item.values())
                    baseline = baseline or total
                    cells = " | ".join(f"{per_item[s]:.3f}" for s in STAGES)
                    print(
                        f"| {steps} | {decoder} | {resolution} | {batch} | {cells} | {total:.3f} | "
                        f"{baseline / total:.2f}x |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
