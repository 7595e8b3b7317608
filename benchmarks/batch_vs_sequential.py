"""Throughput of the ShapeGenerator deployment with dynamic batching (max_batch_size=N) vs without (=1).

Starts a local Ray, deploys the same ShapeGenerator twice in turn (same model, params, overlap and
max_concurrent_batches; only max_batch_size and the max_ongoing_requests it implies differ), and drives each
through a DeploymentHandle with C concurrent asyncio callers until J jobs are done. Prints jobs/min, their
ratio, mean batch size, p50/p95 latency and where the replica's time went, and as its LAST line:

    ratio=<x.xx> batched_jobs_per_min=<..> sequential_jobs_per_min=<..> mean_batch=<..>

CPU, tiny checkpoint (the committed result, benchmarks/results/batch_vs_sequential_cpu.md):
    .venv/bin/python benchmarks/batch_vs_sequential.py --write benchmarks/results/batch_vs_sequential_cpu.md
GPU, real weights (a released folder) or the real architecture with random weights:
    python benchmarks/batch_vs_sequential.py --device cuda --model /models/Hunyuan3D-2/hunyuan3d-dit-v2-0 \
        --steps 50 --octree-resolution 256 --batch-size 4 --concurrency 8 --jobs 32 --torch-threads 0
    python benchmarks/batch_vs_sequential.py --device cuda --model hunyuan3d-dit-v2-0 --random-weights ...
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.chdir(REPO)  # Ray workers import the project from the driver's working directory

import ray  # noqa: E402
from ray import serve  # noqa: E402

from deployments.contract import GenerationRequest, GenerationResult  # noqa: E402
from deployments.engine import PASS_STAGES as STAGES  # noqa: E402
from deployments.generator_config import DEFAULT_MODEL  # noqa: E402
from deployments.hunyuan3d import GenerationParams  # noqa: E402
from deployments.shape_generator import ShapeGenerator  # noqa: E402

IMAGES = REPO / "tests" / "fixtures" / "images"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", "-N", type=int, default=4, help="max_batch_size of the batched run")
    p.add_argument("--concurrency", "-C", type=int, default=8, help="concurrent callers")
    p.add_argument("--jobs", "-J", type=int, default=16, help="timed jobs per configuration")
    p.add_argument("--warmup-jobs", type=int, default=None, help="untimed jobs first (default: C)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="model folder, or a variant name with --random-weights")
    p.add_argument("--random-weights", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--torch-threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch intra-op threads in the replica; default: all cores, as a replica owning the machine "
        "(0: leave it to Ray, which sets OMP_NUM_THREADS=1 in a replica with num_cpus 0 or 1)",
    )
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--octree-resolution", type=int, default=64)
    p.add_argument("--decoder", default="hierarchical", choices=("dense", "hierarchical"))
    p.add_argument("--batch-wait", type=float, default=0.05, help="batch_wait_timeout_s")
    p.add_argument("--max-concurrent-batches", type=int, default=2)
    p.add_argument("--write", type=Path, help="also write the markdown result to this file")
    return p.parse_args()


@dataclass
class RunResult:
    label: str
    max_batch_size: int
    max_ongoing_requests: int
    wall_s: float
    latencies: list[float]
    results: list[GenerationResult]
    pass_sizes: list[int]
    torch_threads: int

    @property
    def jobs_per_min(self) -> float:
        return len(self.results) / self.wall_s * 60

    @property
    def mean_batch(self) -> float:
        return statistics.mean(self.pass_sizes)

    def latency(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    def stage_seconds_per_job(self) -> dict[str, float]:
        # each result carries its whole pass's stage times; dividing by the pass size counts every pass once
        totals = {stage: 0.0 for stage in STAGES}
        for result in self.results:
            for stage in STAGES:
                totals[stage] += result.timings.get(stage, 0.0) / result.batch_size
        return {stage: seconds / len(self.results) for stage, seconds in totals.items()}

    def mean_queue_wait(self) -> float:
        return statistics.mean(r.queue_wait_s for r in self.results)


def image_bytes() -> list[bytes]:
    return [path.read_bytes() for path in sorted(IMAGES.glob("*.png"))]


async def drive(
    handle: Any, params: GenerationParams, jobs: int, concurrency: int, first_seed: int
) -> tuple[float, list[float], list[GenerationResult]]:
    """C callers, each sending its next job as soon as its previous one returns, until J are done."""
    images = image_bytes()
    next_job = iter(range(jobs))
    latencies: list[float] = []
    results: list[GenerationResult] = []

    async def caller() -> None:
        for job in next_job:
            image = images[job % len(images)]
            request = GenerationRequest(image, seed=first_seed + job, params=params, job_id=f"bench-{job}")
            started = time.perf_counter()
            outcome = await handle.generate.remote(request)
            latencies.append(time.perf_counter() - started)
            if not isinstance(outcome, GenerationResult):
                raise RuntimeError(f"job {job} failed: {outcome!r}")
            results.append(outcome)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies, results


def run_configuration(args: argparse.Namespace, label: str, batch_size: int, params: GenerationParams) -> RunResult:
    # one batch running, max_concurrent_batches - 1 extracting surfaces, one more waiting at the admission
    # gate (so the next batch fills at once), + 2 for critical requests: see configs/serve_generator.yaml
    max_ongoing = batch_size * (args.max_concurrent_batches + 1) + 2
    generator_config = {
        "model": args.model,
        "random_weights": args.random_weights,
        "device": args.device,
        "torch_threads": args.torch_threads or None,
        "warmup_params": params.to_dict(),
    }
    user_config = {
        "max_batch_size": batch_size,
        "batch_wait_timeout_s": args.batch_wait,
        "max_concurrent_batches": args.max_concurrent_batches,
    }
    app = ShapeGenerator.options(  # type: ignore[attr-defined]  # a Deployment after @serve.deployment
        max_ongoing_requests=max_ongoing,
        user_config=user_config,
        ray_actor_options={"num_cpus": 0, "num_gpus": 1 if args.device.startswith("cuda") else 0},
    ).bind(generator_config)
    name = f"bench_{label}"
    handle = serve.run(app, name=name, route_prefix=None)
    try:
        warmup = args.concurrency if args.warmup_jobs is None else args.warmup_jobs
        asyncio.run(drive(handle, params, warmup, args.concurrency, first_seed=10_000))
        before = handle.stats.remote().result()
        wall, latencies, results = asyncio.run(drive(handle, params, args.jobs, args.concurrency, first_seed=0))
        passes = handle.stats.remote().result()["passes"][len(before["passes"]) :]
    finally:
        serve.delete(name)
    return RunResult(
        label, batch_size, max_ongoing, wall, latencies, results, [p["size"] for p in passes], before["torch_threads"]
    )


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return (
        f"{os.cpu_count()} CPU cores ({cpu}){gpu}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, torch {torch.__version__}, ray {ray.__version__}"
    )


def report(args: argparse.Namespace, params: GenerationParams, runs: list[RunResult]) -> str:
    sequential, batched = runs
    columns = [
        "config",
        "max_batch_size",
        "max_ongoing_requests",
        "jobs",
        "wall s",
        "jobs/min",
        "mean batch",
        "p50 s",
        "p95 s",
        "mean queue wait s",
    ]
    lines = [_row(columns), _row(["---"] * len(columns))]
    for run in runs:
        lines.append(
            _row(
                [
                    run.label,
                    run.max_batch_size,
                    run.max_ongoing_requests,
                    len(run.results),
                    f"{run.wall_s:.2f}",
                    f"{run.jobs_per_min:.1f}",
                    f"{run.mean_batch:.2f}",
                    f"{run.latency(0.5):.2f}",
                    f"{run.latency(0.95):.2f}",
                    f"{run.mean_queue_wait():.2f}",
                ]
            )
        )
    lines += [
        "",
        "Replica time per job by stage (seconds; a pass's stage time divided by its size):",
        "",
        _row(["config", *STAGES, "total"]),
        _row(["---"] * (len(STAGES) + 2)),
    ]
    for run in runs:
        per_job = run.stage_seconds_per_job()
        lines.append(_row([run.label, *(f"{per_job[s]:.3f}" for s in STAGES), f"{sum(per_job.values()):.3f}"]))
    ratio = batched.jobs_per_min / sequential.jobs_per_min
    lines += [
        "",
        f"ratio={ratio:.2f} batched_jobs_per_min={batched.jobs_per_min:.1f} "
        f"sequential_jobs_per_min={sequential.jobs_per_min:.1f} mean_batch={batched.mean_batch:.2f}",
    ]
    header = [
        f"params: {params.to_dict()}",
        f"N={args.batch_size} C={args.concurrency} J={args.jobs}, model {args.model}"
        f"{' (random weights)' if args.random_weights else ''}, device {args.device}, "
        f"torch threads in replica {runs[0].torch_threads}, batch_wait_timeout_s {args.batch_wait}, "
        f"max_concurrent_batches {args.max_concurrent_batches}",
        f"machine: {machine()}",
        "",
    ]
    return "\n".join(header + lines)


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def main() -> None:
    args = parse_args()
    params = GenerationParams(
        num_inference_steps=args.steps, octree_resolution=args.octree_resolution, volume_decoder=args.decoder
    )
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        runs = [
            run_configuration(args, "sequential", 1, params),
            run_configuration(args, "batched", args.batch_size, params),
        ]
    finally:
        serve.shutdown()
        ray.shutdown()
    text = report(args, params, runs)
    if args.write:
        command = "python benchmarks/batch_vs_sequential.py " + " ".join(sys.argv[1:])
        args.write.write_text(f"# ShapeGenerator: batched vs sequential\n\nCommand: `{command}`\n\n```\n{text}\n```\n")
    print(text)


if __name__ == "__main__":
    main()
