"""Per-stage cost of the REAL-SIZE architectures (random weights), side by side in one run.

For each variant (default: Hunyuan3D-2.0 ``hunyuan3d-dit-v2-0``, ``hunyuan3d-dit-v2-mini`` and Hunyuan3D-2.1
``hunyuan3d-dit-v2-1``) the script builds the architecture with random weights, one model at a time, and
prints its parameter count, build time and peak host memory, then the seconds of each pipeline stage per
item for every (steps, R, B) cell, and each variant's total relative to the first variant's. Weights are
random, so the decoded field is noise: dense decoding costs what it costs on real weights, but hierarchical
decoding prunes nothing useful (see ../shared/notes/hunyuan3d.md), so the default decoder is dense.

CPU (small settings: the real sizes take minutes per DiT step on 2 cores):
    .venv/bin/python benchmarks/real_size_stages.py
GPU (what the issue asks for when one is lent):
    python benchmarks/real_size_stages.py --device cuda --dtype fp16 --steps 5 50 --resolutions 256 \
        --batch-sizes 1 4
"""

from __future__ import annotations

import argparse
import gc
import platform
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.pipeline_batching import DTYPES, STAGE_LABELS, measure  # noqa: E402
from deployments.hunyuan3d import STAGES, GenerationParams, ShapePipeline  # noqa: E402

DEFAULT_VARIANTS = ["hunyuan3d-dit-v2-0", "hunyuan3d-dit-v2-mini", "hunyuan3d-dit-v2-1"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, help="named variants or config folders")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: fp16 on cuda, fp32 on cpu")
    p.add_argument("--steps", type=int, nargs="+", default=[2])
    p.add_argument("--resolutions", type=int, nargs="+", default=[64])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1])
    p.add_argument("--decoder", default="dense", choices=["dense", "hierarchical", "adaptive"])
    p.add_argument("--num-chunks", type=int, default=32768, help="query points per geometry-decoder call")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per cell (median reported)")
    p.add_argument(
        "--no-warmup",
        action="store_true",
        help="skip the warm-up pass per variant (on CPU a real-size pass takes minutes; first-call costs are noise)",
    )
    return p.parse_args()


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def billions(count: int) -> str:
    return f"{count / 1e9:.3f}B" if count >= 10**8 else f"{count / 1e6:.2f}M"


def parameter_counts(pipeline: ShapePipeline) -> dict[str, int]:
    return {
        "dit": sum(p.numel() for p in pipeline.dit.parameters()),
        "vae": sum(p.numel() for p in pipeline.vae.parameters()),
        "conditioner": sum(p.numel() for p in pipeline.conditioner.parameters()),
    }


def main() -> None:
    args = parse_args()
    dtype = DTYPES[args.dtype] if args.dtype else None
    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}" + (f", {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else "")
    )
    header = (
        "| variant | params (DiT / VAE / cond) | steps | R | B | "
        + " | ".join(f"{STAGE_LABELS[s]} s/item" for s in STAGES)
        + " | total s/item | vs first |"
    )
    rows: list[str] = []
    first_total: dict[tuple[int, int, int], float] = {}
    for variant in args.variants:
        started = time.perf_counter()
        pipeline = ShapePipeline.from_config(variant, seed=0, device=args.device, dtype=dtype)
        build_s = time.perf_counter() - started
        counts = parameter_counts(pipeline)
        print(
            f"{variant}: built in {build_s:.1f} s, dtype {pipeline.dtype}, "
            f"params DiT {billions(counts['dit'])} VAE {billions(counts['vae'])} "
            f"conditioner {billions(counts['conditioner'])}, peak host memory so far {peak_rss_gib():.1f} GiB",
            flush=True,
        )
        if not args.no_warmup:  # first calls pay for allocator growth and kernel selection
            warmup = GenerationParams(num_inference_steps=2, octree_resolution=32, volume_decoder="dense")
            measure(pipeline, 1, warmup, 1)
        params_text = " / ".join(billions(counts[part]) for part in ("dit", "vae", "conditioner"))
        for steps in args.steps:
            for resolution in args.resolutions:
                for batch in args.batch_sizes:
                    params = GenerationParams(
                        num_inference_steps=steps,
                        octree_resolution=resolution,
                        volume_decoder=args.decoder,
                        num_chunks=args.num_chunks,
                    )
                    seconds = measure(pipeline, batch, params, args.repeats)
                    per_item = {s: v / batch for s, v in seconds.items()}
                    total = sum(per_item.values())
                    key = (steps, resolution, batch)
                    first_total.setdefault(key, total)
                    cells = " | ".join(f"{per_item[s]:.2f}" for s in STAGES)
                    row = (
                        f"| {variant} | {params_text} | {steps} | {resolution} | {batch} | {cells} | {total:.2f} | "
                        f"{total / first_total[key]:.2f}x |"
                    )
                    rows.append(row)
                    print(row, flush=True)
        del pipeline
        gc.collect()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    print()
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
