"""The OFFICIAL hy3dgen shape pipeline against ours, side by side in one run: same checkpoint, images, seeds, params.

    .venv/bin/python benchmarks/vs_official.py                    # cases 5x256 and 10x128, 4 jobs, 3 repeats
    .venv/bin/python benchmarks/vs_official.py --quick            # smoke run: 2x32, 2 jobs, 1 repeat (~1 min)
    .venv/bin/python benchmarks/vs_official.py --write benchmarks/results/vs_official_cpu.md

Per case (``<steps>x<octree resolution>``) it times, on the same jobs (images cycled to ``--jobs``, one seed
each):
- official ``dense`` and ``flashvdm``: ``benchmarks/official_runner.py`` in the reference venv of
  ``tests/parity/README.md`` (a subprocess; one job at a time, as the official pipeline only runs batch 1);
- ours, in this process, for every decoder of ``--our-decoders`` (default: all of ``VOLUME_DECODERS``):
  ``-B1`` one job per call, and ``-B<n>`` the jobs in batches of ``--batch-size``.
Both processes pin torch to ``--threads`` threads. Each side gets an untimed warm-up first.

Protocol: ``--repeats`` rounds, the sides alternating which goes first (official, ours; ours, official; ...)
and ours' variants reversing their order each round, so a slow spell of the shared machine does not land on
one side. Per variant the FASTEST round is kept: other load only ever adds time, so the minimum is the best
estimate of a variant's own cost, and every variant has had the same number of chances at it.

Faces: official ``dense`` is the reference (our dense decoder is parity-tested against it to the face).
A variant's ``faces vs dense`` is the per-job (faces - dense faces) / dense faces in %, the job with the
largest magnitude kept, signed. The last lines, one per case, are machine-readable:
``case=5x256 ratio_vs_official_fastest=<x.xx> ours_best=<name> ours_s_per_job=<..> official_fastest=<name>
official_s_per_job=<..> faces_vs_dense_pct=<..>``: the ratio is the fastest official variant's seconds per
job over our fastest variant's whose faces are within 2 % of dense (> 1: ours is faster). When none of ours
is within 2 %, the values are ``n/a`` and the line ends ``note=no_variant_of_ours_within_2pct_of_dense``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from deployments.hunyuan3d import STAGES, GenerationParams, ShapePipeline, StageTimings  # noqa: E402
from deployments.hunyuan3d.params import (  # noqa: E402
    MAX_INFERENCE_STEPS,
    MAX_OCTREE_RESOLUTION,
    MIN_OCTREE_RESOLUTION,
    VOLUME_DECODERS,
)

DEFAULT_MODEL = REPO / "configs" / "models" / "tiny-Hunyuan3D-2" / "hunyuan3d-dit-v2-0"
IMAGES = REPO / "tests" / "fixtures" / "images"
RUNNER = REPO / "benchmarks" / "official_runner.py"
OFFICIAL_DECODERS = ("dense", "flashvdm")
REFERENCE = "official-dense"
FACE_TOLERANCE_PCT = 2.0
QUICK_CASE = "2x32"

Side = Literal["official", "ours"]


@dataclass(frozen=True)
class Case:
    steps: int
    resolution: int

    @property
    def name(self) -> str:
        return f"{self.steps}x{self.resolution}"


@dataclass(frozen=True)
class VariantRun:
    """One timed pass of one variant over all jobs of a case."""

    name: str  # official-dense, ours-hierarchical-B4, ...
    side: Side
    batch_size: int
    s_per_job: float
    stage_s_per_job: dict[str, float]
    faces: tuple[int, ...]  # per job; 0 where a job gave no surface


@dataclass(frozen=True)
class CaseSummary:
    case: Case
    official_fastest: VariantRun
    ours_best: VariantRun | None  # fastest of ours within the face tolerance of dense
    faces_vs_dense_pct: float | None  # of ours_best

    @property
    def ratio(self) -> float | None:
        if self.ours_best is None:
            return None
        return self.official_fastest.s_per_job / self.ours_best.s_per_job


def parse_case(text: str) -> Case:
    """``"5x256"`` -> 5 steps at octree resolution 256."""
    steps, sep, resolution = text.lower().partition("x")
    if not sep or not steps.isdigit() or not resolution.isdigit():
        raise argparse.ArgumentTypeError(f"case {text!r}: write <steps>x<octree resolution>, e.g. 5x256")
    case = Case(int(steps), int(resolution))
    if not 1 <= case.steps <= MAX_INFERENCE_STEPS:
        raise argparse.ArgumentTypeError(f"case {text!r}: steps must be between 1 and {MAX_INFERENCE_STEPS}")
    if not MIN_OCTREE_RESOLUTION <= case.resolution <= MAX_OCTREE_RESOLUTION:
        raise argparse.ArgumentTypeError(
            f"case {text!r}: octree resolution must be between {MIN_OCTREE_RESOLUTION} and {MAX_OCTREE_RESOLUTION}"
        )
    return case


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="released-layout model folder (both sides)")
    p.add_argument("--images", type=Path, nargs="+", default=None, help="default: tests/fixtures/images/*.png")
    p.add_argument("--jobs", type=int, default=None, help="images cycled to this many jobs (default 4; quick 2)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="one per job (default 0 .. jobs-1)")
    p.add_argument("--cases", type=parse_case, nargs="+", default=None, help="<steps>x<R> (default 5x256 10x128)")
    p.add_argument(
        "--reference-python",
        type=Path,
        default=Path(os.environ.get("ORFEAS_REFERENCE_PYTHON", "/tmp/refvenv/bin/python")),
        help="python of the reference venv (tests/parity/README.md); default $ORFEAS_REFERENCE_PYTHON",
    )
    p.add_argument("--our-decoders", nargs="+", default=list(VOLUME_DECODERS), choices=list(VOLUME_DECODERS))
    p.add_argument("--official-decoders", nargs="+", default=list(OFFICIAL_DECODERS), choices=OFFICIAL_DECODERS)
    p.add_argument("--batch-size", type=int, default=None, help="B of our batched variant (default: jobs)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds, fastest kept (default 3; quick 1)")
    p.add_argument("--threads", type=int, default=2, help="torch threads in both processes")
    p.add_argument("--num-chunks", type=int, default=8000, help="query points per decoder call (official default)")
    p.add_argument("--guidance-scale", type=float, default=5.0)
    p.add_argument("--write", type=Path, default=None, help="also write the report as markdown here")
    p.add_argument("--quick", action="store_true", help=f"smoke run: case {QUICK_CASE}, 2 jobs, 1 repeat")
    args = p.parse_args(argv)
    # --quick only fills what was not given explicitly
    args.cases = args.cases or ([parse_case(QUICK_CASE)] if args.quick else [parse_case("5x256"), parse_case("10x128")])
    args.jobs = args.jobs or (2 if args.quick else 4)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.batch_size = args.batch_size or args.jobs
    args.images = args.images or sorted(IMAGES.glob("*.png"))
    args.seeds = args.seeds or list(range(args.jobs))
    if len(args.seeds) != args.jobs:
        p.error(f"got {len(args.seeds)} seeds for {args.jobs} jobs; give one seed per job or leave --seeds out")
    if not 1 <= args.batch_size <= args.jobs:
        p.error(f"--batch-size must be between 1 and --jobs ({args.jobs}), got {args.batch_size}")
    if "dense" not in args.official_decoders:
        p.error("official dense is the face reference: keep 'dense' in --official-decoders")
    if args.threads < 1:
        p.error("--threads must be at least 1 (both sides get the same number)")
    return args


def job_images(paths: Sequence[Path], jobs: int) -> list[Path]:
    return [paths[i % len(paths)] for i in range(jobs)]


def round_order(round_index: int) -> tuple[Side, Side]:
    """Which side goes first alternates round by round."""
    return ("official", "ours") if round_index % 2 == 0 else ("ours", "official")


# --- official side -----------------------------------------------------------------------------------------


def official_runs(document: dict[str, Any]) -> list[VariantRun]:
    """The runner's JSON (``benchmarks/official_runner.py``) -> one run per decoder."""
    jobs = len(document["settings"]["seeds"])
    runs = []
    for decoder, run in document["decoders"].items():
        runs.append(
            VariantRun(
                name=f"official-{decoder}",
                side="official",
                batch_size=1,
                s_per_job=run["wall_s"] / jobs,
                stage_s_per_job={stage: run["stage_s"].get(stage, 0.0) / jobs for stage in STAGES},
                faces=tuple(run["faces"]),
            )
        )
    return runs


def run_official(
    args: argparse.Namespace, case: Case, images: Sequence[Path], decoders: Sequence[str]
) -> dict[str, Any]:
    """One pass of the official decoders over the jobs, in the reference venv; the runner's JSON."""
    command = [
        str(args.reference_python),
        str(RUNNER),
        "--model",
        str(args.model),
        "--images",
        *map(str, images),
        "--seeds",
        *map(str, args.seeds),
        "--steps",
        str(case.steps),
        "--octree-resolution",
        str(case.resolution),
        "--guidance-scale",
        str(args.guidance_scale),
        "--num-chunks",
        str(args.num_chunks),
        "--threads",
        str(args.threads),
        "--decoders",
        *decoders,
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"official runner failed ({done.returncode}): {shlex.join(command)}\n{done.stderr[-4000:]}")
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def check_reference_python(path: Path) -> None:
    if not path.is_file():
        raise SystemExit(
            f"reference python {path} not found: build the reference venv as in tests/parity/README.md, "
            "then pass --reference-python or set ORFEAS_REFERENCE_PYTHON"
        )


# --- our side ----------------------------------------------------------------------------------------------


def load_images(paths: Sequence[Path]) -> list[Image.Image]:
    images = []
    for path in paths:
        with Image.open(path) as image:
            image.load()
            images.append(image.copy())
    return images


def our_params(args: argparse.Namespace, case: Case, decoder: str) -> GenerationParams:
    return GenerationParams(
        num_inference_steps=case.steps,
        octree_resolution=case.resolution,
        guidance_scale=args.guidance_scale,
        num_chunks=args.num_chunks,
        volume_decoder=decoder,  # type: ignore[arg-type]  # validated by GenerationParams
    )


def run_ours(
    pipeline: ShapePipeline,
    images: Sequence[Image.Image],
    seeds: Sequence[int],
    params: GenerationParams,
    batch_size: int,
) -> VariantRun:
    """One pass over the jobs in batches of ``batch_size``."""
    timings = StageTimings()
    faces: list[int] = []
    start = time.perf_counter()
    for first in range(0, len(images), batch_size):
        meshes = pipeline.generate_shape_batch(
            images[first : first + batch_size], seeds[first : first + batch_size], params, timings, True
        )
        faces.extend(0 if isinstance(mesh, Exception) else len(mesh.faces) for mesh in meshes)
    wall = time.perf_counter() - start
    jobs = len(images)
    return VariantRun(
        name=f"ours-{params.volume_decoder}-B{batch_size}",
        side="ours",
        batch_size=batch_size,
        s_per_job=wall / jobs,
        stage_s_per_job={stage: timings.seconds.get(stage, 0.0) / jobs for stage in STAGES},
        faces=tuple(faces),
    )


def our_variants(args: argparse.Namespace) -> list[tuple[str, int]]:
    """(decoder, batch size) pairs: sequential and batched per decoder (one of them when B is 1)."""
    sizes = [1] if args.batch_size == 1 else [1, args.batch_size]
    return [(decoder, size) for decoder in args.our_decoders for size in sizes]


def warm_up_ours(pipeline: ShapePipeline, image: Image.Image, decoders: Sequence[str]) -> None:
    """One small untimed job per decoder: first-call costs (allocator, lazy imports) out of the timed runs."""
    for decoder in decoders:
        params = GenerationParams(num_inference_steps=2, octree_resolution=64, volume_decoder=decoder)  # type: ignore[arg-type]
        pipeline.generate_shape_batch([image], [0], params, return_exceptions=True)


def run_ours_round(
    pipeline: ShapePipeline, args: argparse.Namespace, case: Case, images: Sequence[Image.Image], round_index: int
) -> list[VariantRun]:
    variants = our_variants(args)
    if round_index % 2:
        variants.reverse()
    return [run_ours(pipeline, images, args.seeds, our_params(args, case, d), size) for d, size in variants]


# --- comparison --------------------------------------------------------------------------------------------


def keep_fastest(runs: Sequence[VariantRun]) -> list[VariantRun]:
    """Per variant name, the run with the fewest seconds per job; first-seen order kept."""
    best: dict[str, VariantRun] = {}
    for run in runs:
        if run.name not in best or run.s_per_job < best[run.name].s_per_job:
            best[run.name] = run
    return list(best.values())


def face_diff_pct(faces: Sequence[int], reference: Sequence[int]) -> float:
    """The per-job (faces - reference) / reference in % of largest magnitude, signed (inf: surface from none)."""
    if len(faces) != len(reference):
        raise ValueError(f"{len(faces)} face counts against {len(reference)} reference jobs")
    diffs = []
    for mine, ref in zip(faces, reference, strict=True):
        if ref == 0:
            diffs.append(0.0 if mine == 0 else math.inf)
        else:
            diffs.append(100.0 * (mine - ref) / ref)
    return max(diffs, key=abs)


def summarize(case: Case, runs: Sequence[VariantRun], tolerance_pct: float = FACE_TOLERANCE_PCT) -> CaseSummary:
    reference = next(run for run in runs if run.name == REFERENCE).faces
    official = [run for run in runs if run.side == "official"]
    close = [run for run in runs if run.side == "ours" and abs(face_diff_pct(run.faces, reference)) <= tolerance_pct]
    ours_best = min(close, key=lambda run: run.s_per_job) if close else None
    return CaseSummary(
        case=case,
        official_fastest=min(official, key=lambda run: run.s_per_job),
        ours_best=ours_best,
        faces_vs_dense_pct=None if ours_best is None else face_diff_pct(ours_best.faces, reference),
    )


def summary_line(summary: CaseSummary) -> str:
    best, official, ratio = summary.ours_best, summary.official_fastest, summary.ratio
    line = (
        f"case={summary.case.name} ratio_vs_official_fastest={'n/a' if ratio is None else f'{ratio:.2f}'} "
        f"ours_best={'n/a' if best is None else best.name} "
        f"ours_s_per_job={'n/a' if best is None else f'{best.s_per_job:.3f}'} "
        f"official_fastest={official.name} official_s_per_job={official.s_per_job:.3f} "
        f"faces_vs_dense_pct={'n/a' if summary.faces_vs_dense_pct is None else f'{summary.faces_vs_dense_pct:+.2f}'}"
    )
    if best is None:
        line += f" note=no_variant_of_ours_within_{FACE_TOLERANCE_PCT:g}pct_of_dense"
    return line


def stage_table(runs: Sequence[VariantRun]) -> list[str]:
    """Markdown table: seconds per job per stage, seconds per job, face counts and their difference to dense."""
    reference = next(run for run in runs if run.name == REFERENCE).faces
    header = ["variant", "B", *(f"{stage} s" for stage in STAGES), "s/job", "faces per job", "faces vs dense %"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        cells = [
            run.name,
            str(run.batch_size),
            *(f"{run.stage_s_per_job[stage]:.3f}" for stage in STAGES),
            f"{run.s_per_job:.3f}",
            " ".join(map(str, run.faces)),
            f"{face_diff_pct(run.faces, reference):+.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def parity_note(runs: Sequence[VariantRun]) -> str:
    """Our sequential dense decoder against official dense, face for face (the parity tests claim equality)."""
    reference = next(run for run in runs if run.name == REFERENCE).faces
    ours = next((run for run in runs if run.name == "ours-dense-B1"), None)
    if ours is None:
        return "parity: ours-dense-B1 not run"
    verdict = "equal" if ours.faces == reference else "DIFFERENT (the parity tests say they should be equal)"
    return f"parity: ours-dense-B1 faces vs official-dense faces: {verdict}"


# --- report ------------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def busy_note(load_1min: float, cores: int) -> str | None:
    """A warning when other work already holds half the cores: with 2 threads per process, an OpenMP thread
    that loses its core stalls every parallel region, and calls of 0.3 s were seen taking 4 s."""
    if load_1min < cores / 2:
        return None
    return (
        f"Machine busy at the start (load average {load_1min:.2f} on {cores} cores): the timings are not "
        "reliable; rerun on a quiet machine."
    )


def machine_info(official_document: dict[str, Any], load_at_start: str) -> dict[str, str]:
    versions = official_document.get("versions", {})
    return {
        "cpu": cpu_model(),
        "cores": f"{os.cpu_count()} logical ({len(os.sched_getaffinity(0))} usable by this process)",
        "torch threads": f"ours {torch.get_num_threads()}, official {official_document.get('torch_threads', '?')}",
        "ours": f"torch {torch.__version__}, Python {platform.python_version()}",
        "official": ", ".join(f"{name} {version}" for name, version in versions.items()),
        "load average (1, 5, 15 min)": f"{load_at_start} at the start, {load_average()} at the end",
    }


def case_block(case: Case, runs: Sequence[VariantRun]) -> list[str]:
    return [
        f"### case {case.name} ({case.steps} steps, octree resolution {case.resolution})",
        "",
        *stage_table(runs),
        "",
    ]


def markdown_report(
    args: argparse.Namespace,
    command: str,
    machine: dict[str, str],
    results: Sequence[tuple[Case, list[VariantRun]]],
    started: datetime.datetime,
    warnings: Sequence[str] = (),
) -> str:
    title = "# Official hy3dgen shape pipeline vs ours (CPU)"
    lines = [title, ""]
    if args.quick:
        lines += ["**QUICK SMOKE RUN (--quick): a tiny case to check the script runs; not a measurement.**", ""]
    lines += [line for warning in warnings for line in (f"**{warning}**", "")]
    lines += [
        f"Command: `{command}`",
        "",
        f"Date: {started.isoformat(timespec='seconds')}; model `{display_path(args.model)}`; "
        f"{args.jobs} jobs (images {', '.join(p.name for p in job_images(args.images, args.jobs))}; "
        f"seeds {' '.join(map(str, args.seeds))}); {args.repeats} interleaved round(s), fastest kept; "
        f"num_chunks {args.num_chunks}, guidance {args.guidance_scale}.",
        "",
        *(f"- {key}: {value}" for key, value in machine.items()),
        "",
    ]
    for case, runs in results:
        lines += [*case_block(case, runs), parity_note(runs), ""]
    lines += ["```", *(summary_line(summarize(case, runs)) for case, runs in results), "```", ""]
    lines += [
        "Seconds are per job (a stage's total over the jobs divided by their number); official stages are timed",
        "by wrappers around the pipeline's own methods, ours by its StageTimings. `ratio_vs_official_fastest` is",
        "the fastest official variant's s/job over our fastest variant's whose faces are within "
        f"{FACE_TOLERANCE_PCT:g} % of official dense (> 1: ours is faster).",
        "",
    ]
    return "\n".join(lines)


def display_path(path: Path) -> str:
    resolved = path.resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(path)


# --- run ---------------------------------------------------------------------------------------------------


# (args, case, job image paths, official decoders in run order) -> the runner's JSON
OfficialRunner = Callable[[argparse.Namespace, Case, Sequence[Path], Sequence[str]], dict[str, Any]]


def measure_case(
    pipeline: ShapePipeline,
    args: argparse.Namespace,
    case: Case,
    images: Sequence[Image.Image],
    official: OfficialRunner = run_official,
) -> tuple[list[VariantRun], dict[str, Any]]:
    """All variants of one case over ``args.repeats`` interleaved rounds; the fastest round per variant."""
    paths = job_images(args.images, args.jobs)
    runs: list[VariantRun] = []
    document: dict[str, Any] = {}
    for round_index in range(args.repeats):
        for side in round_order(round_index):
            if side == "official":
                decoders = list(args.official_decoders)
                document = official(args, case, paths, decoders[::-1] if round_index % 2 else decoders)
                runs += official_runs(document)
            else:
                runs += run_ours_round(pipeline, args, case, images, round_index)
        print(f"  {case.name}: round {round_index + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    fastest = keep_fastest(runs)
    # official dense (the reference) first, then the other official variants, then ours
    fastest.sort(key=lambda run: (run.side != "official", run.side == "official" and run.name != REFERENCE))
    return fastest, document


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    check_reference_python(args.reference_python)
    started, load_at_start = datetime.datetime.now(datetime.timezone.utc), load_average()
    busy = busy_note(os.getloadavg()[0], os.cpu_count() or 1)
    if busy:
        print(busy, file=sys.stderr)
    command = shlex.join([".venv/bin/python", "benchmarks/vs_official.py", *(sys.argv[1:] if argv is None else argv)])
    torch.set_num_threads(args.threads)
    pipeline = ShapePipeline.from_pretrained(args.model)
    images = load_images(job_images(args.images, args.jobs))
    warm_up_ours(pipeline, images[0], args.our_decoders)
    results: list[tuple[Case, list[VariantRun]]] = []
    document: dict[str, Any] = {}
    for case in args.cases:
        runs, document = measure_case(pipeline, args, case, images)
        results.append((case, runs))
        print("\n".join([*case_block(case, runs), parity_note(runs), ""]), flush=True)
    report = markdown_report(
        args, command, machine_info(document, load_at_start), results, started, [busy] if busy else []
    )
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(report)
        print(f"wrote {args.write}", file=sys.stderr)
    for case, runs in results:
        print(summary_line(summarize(case, runs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
