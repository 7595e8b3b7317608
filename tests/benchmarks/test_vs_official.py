"""The side-by-side benchmark against the official pipeline, without the reference venv (CI has none).

The official side is a recorded document of the real runner (``fixtures_vs_official/official_runner_2x32.json``,
made by ``benchmarks/official_runner.py`` in /tmp/refvenv with the arguments ``vs_official.py --quick`` passes:
tiny CFG checkpoint, object_rgba.png + plain_rgb.png, seeds 0 1, 2 steps, R 32, guidance 5, num_chunks 8000,
2 threads, decoders dense flashvdm). Our side runs for real, in-process.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks.vs_official import (
    REFERENCE,
    Case,
    OfficialRunner,
    VariantRun,
    busy_note,
    face_diff_pct,
    keep_fastest,
    load_images,
    main,
    markdown_report,
    measure_case,
    official_runs,
    parse_args,
    parse_case,
    round_order,
    stage_table,
    summarize,
    summary_line,
)
from deployments.hunyuan3d import STAGES, ShapePipeline
from deployments.hunyuan3d.params import VOLUME_DECODERS

RECORDED = Path(__file__).parent / "fixtures_vs_official" / "official_runner_2x32.json"


def _recorded() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(RECORDED.read_text())
    return document


def _ours(name: str, s_per_job: float, faces: tuple[int, ...], batch_size: int = 1) -> VariantRun:
    return VariantRun(name, "ours", batch_size, s_per_job, dict.fromkeys(STAGES, 0.0), faces)


def test_parse_case_reads_steps_by_resolution():
    assert parse_case("5x256") == Case(5, 256)
    assert parse_case("10X128").name == "10x128"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("5-256", "write <steps>x<octree resolution>"),
        ("x256", "write <steps>x<octree resolution>"),
        ("0x256", "steps must be between 1 and 200"),
        ("5x8", "octree resolution must be between 16 and 512"),
    ],
)
def test_parse_case_rejects_bad_text_with_the_fix(text: str, message: str):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        parse_case(text)


def test_parse_args_defaults_cover_both_cases_and_every_decoder_of_ours(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ORFEAS_REFERENCE_PYTHON", "/opt/ref/bin/python")
    args = parse_args([])
    assert args.cases == [Case(5, 256), Case(10, 128)]
    assert args.our_decoders == list(VOLUME_DECODERS)
    assert args.official_decoders == ["dense", "flashvdm"]
    assert (args.jobs, args.batch_size, args.repeats, args.threads) == (4, 4, 3, 2)
    assert args.seeds == [0, 1, 2, 3]
    assert args.reference_python == Path("/opt/ref/bin/python")
    assert [p.name for p in args.images] == ["object_rgba.png", "plain_rgb.png", "soft_rgba.png"]


def test_parse_args_quick_fills_only_what_was_not_given():
    quick = parse_args(["--quick"])
    assert (quick.cases, quick.jobs, quick.repeats, quick.batch_size) == ([Case(2, 32)], 2, 1, 2)
    given = parse_args(["--quick", "--cases", "3x32", "--jobs", "3", "--batch-size", "2"])
    assert (given.cases, given.jobs, given.batch_size, given.seeds) == ([Case(3, 32)], 3, 2, [0, 1, 2])


@pytest.mark.parametrize(
    "argv",
    [
        ["--jobs", "3", "--seeds", "0", "1"],
        ["--jobs", "2", "--batch-size", "3"],
        ["--official-decoders", "flashvdm"],
        ["--our-decoders", "no-such-decoder"],
    ],
)
def test_parse_args_refuses_inconsistent_settings(argv: list[str], capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_main_without_reference_env_fails_loudly_pointing_to_its_recipe(tmp_path: Path):
    with pytest.raises(SystemExit, match=r"not found: build the reference venv as in tests/parity/README\.md"):
        main(["--quick", "--reference-python", str(tmp_path / "missing" / "python")])


def test_busy_note_warns_once_other_work_holds_half_the_cores():
    assert busy_note(0.7, 2) is None
    note = busy_note(1.0, 2)
    assert note is not None and note.startswith("Machine busy at the start (load average 1.00 on 2 cores)")


def test_round_order_alternates_which_side_goes_first():
    assert [round_order(i) for i in range(4)] == [
        ("official", "ours"),
        ("ours", "official"),
        ("official", "ours"),
        ("ours", "official"),
    ]


def test_official_runs_read_the_recorded_runner_json_per_job():
    document = _recorded()
    dense, flashvdm = official_runs(document)
    assert (dense.name, flashvdm.name) == ("official-dense", "official-flashvdm")
    assert dense.faces == (4136, 3956) and flashvdm.faces == (4524, 4976)
    raw = document["decoders"]["dense"]
    assert dense.s_per_job == pytest.approx(raw["wall_s"] / 2)
    assert dense.stage_s_per_job["volume_decoding"] == pytest.approx(raw["stage_s"]["volume_decoding"] / 2)
    # the timed jobs kept the wrapped CPU marching cubes: its time is there and inside the surface stage
    assert 0 < raw["marching_cubes_s"] <= raw["stage_s"]["surface_extraction"]
    assert {raw["surface_extractor"], document["decoders"]["flashvdm"]["surface_extractor"]} == {"MCSurfaceExtractor"}
    # the stages account for the jobs' time (the rest is the loop between jobs)
    assert sum(raw["stage_s"].values()) == pytest.approx(sum(raw["job_s"]), rel=1e-6)


def test_face_diff_pct_keeps_the_job_of_largest_magnitude_signed():
    # official flashvdm against official dense at 2x32 (recorded): +9.4 % and +25.8 %
    assert face_diff_pct((4524, 4976), (4136, 3956)) == pytest.approx(100 * (4976 - 3956) / 3956)
    assert face_diff_pct((4000, 3956), (4136, 3956)) == pytest.approx(100 * (4000 - 4136) / 4136)
    assert face_diff_pct((0, 3956), (4136, 3956)) == -100.0
    assert face_diff_pct((0, 5), (0, 5)) == 0.0
    assert math.isinf(face_diff_pct((3, 5), (0, 5)))
    with pytest.raises(ValueError, match="2 face counts against 3 reference jobs"):
        face_diff_pct((1, 2), (1, 2, 3))


def test_summarize_takes_our_fastest_within_two_percent_of_dense():
    official = official_runs(_recorded())  # dense faces 4136 3956
    runs = [
        *official,
        _ours("ours-dense-B1", 0.503, (4136, 3956)),
        _ours("ours-hierarchical-B2", 0.417, (4136, 4000), batch_size=2),  # +1.11 %: allowed
        _ours("ours-adaptive-B2", 0.200, (4136, 4050), batch_size=2),  # +2.38 %: too far, not the best
    ]
    summary = summarize(Case(2, 32), runs)
    fastest_official = min(official, key=lambda run: run.s_per_job)
    assert summary.official_fastest == fastest_official
    assert summary.ours_best is not None and summary.ours_best.name == "ours-hierarchical-B2"
    assert summary.ratio == pytest.approx(fastest_official.s_per_job / 0.417)
    assert summary.faces_vs_dense_pct == pytest.approx(100 * 44 / 3956)
    assert summary_line(summary) == (
        f"case=2x32 ratio_vs_official_fastest={fastest_official.s_per_job / 0.417:.2f} "
        f"ours_best=ours-hierarchical-B2 ours_s_per_job=0.417 official_fastest={fastest_official.name} "
        f"official_s_per_job={fastest_official.s_per_job:.3f} faces_vs_dense_pct=+1.11"
    )


def test_summary_line_says_so_when_no_variant_of_ours_is_within_tolerance():
    runs = [*official_runs(_recorded()), _ours("ours-adaptive-B2", 0.2, (4524, 4976), batch_size=2)]
    summary = summarize(Case(2, 32), runs)
    assert summary.ours_best is None and summary.ratio is None
    line = summary_line(summary)
    assert line.startswith("case=2x32 ratio_vs_official_fastest=n/a ours_best=n/a ours_s_per_job=n/a ")
    assert line.endswith("faces_vs_dense_pct=n/a note=no_variant_of_ours_within_2pct_of_dense")


def test_keep_fastest_keeps_the_quickest_round_per_variant_in_first_seen_order():
    runs = [_ours("a", 2.0, (1,)), _ours("b", 1.0, (1,)), _ours("a", 1.5, (1,)), _ours("b", 3.0, (1,))]
    assert [(run.name, run.s_per_job) for run in keep_fastest(runs)] == [("a", 1.5), ("b", 1.0)]


def test_stage_table_has_one_row_per_variant_with_seconds_faces_and_difference():
    runs = [*official_runs(_recorded()), _ours("ours-dense-B1", 0.5, (4136, 3956))]
    header, rule, *rows = stage_table(runs)
    assert header.count("|") == rule.count("|") == 12
    assert rows[1].startswith("| official-flashvdm | 1 | ") and rows[1].endswith(" | 4524 4976 | +25.78 |")
    assert rows[2].endswith(" | 0.500 | 4136 3956 | +0.00 |")


@pytest.fixture(scope="module")
def tiny_pipeline() -> Iterator[ShapePipeline]:
    # These tests check behaviour, not speed: one torch thread keeps them quick on a busy 2-core box, where a
    # second OpenMP thread that loses its core stalls every parallel region (seen: 0.3 s calls taking 4 s).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield ShapePipeline.from_pretrained(parse_args([]).model)
    torch.set_num_threads(threads)


def _recorded_official(asked: list[list[str]]) -> OfficialRunner:
    """The official side as the recorded runner document, checking it is asked for the recorded jobs."""
    recorded = _recorded()

    def official(
        args: argparse.Namespace, case: Case, paths: Sequence[Path], decoders: Sequence[str]
    ) -> dict[str, Any]:
        settings = recorded["settings"]
        assert (case.steps, case.resolution, args.seeds) == (
            settings["steps"],
            settings["octree_resolution"],
            settings["seeds"],
        )
        assert [p.name for p in paths] == settings["images"]
        asked.append(list(decoders))
        return recorded

    return official


def _job_images(args: argparse.Namespace) -> list[Any]:
    return load_images([args.images[i % len(args.images)] for i in range(args.jobs)])


def test_quick_case_ours_in_process_against_the_recorded_official_run(tiny_pipeline: ShapePipeline):
    """--quick for real on our side, the recorded runner document as the official side."""
    args = parse_args(["--quick"])
    asked: list[list[str]] = []
    runs, document = measure_case(tiny_pipeline, args, args.cases[0], _job_images(args), _recorded_official(asked))

    assert asked == [["dense", "flashvdm"]]
    assert document == _recorded()  # the runner document the report takes the official versions from
    names = [run.name for run in runs]
    assert names[:2] == [REFERENCE, "official-flashvdm"]
    assert names[2:] == [f"ours-{d}-B{b}" for d in VOLUME_DECODERS for b in (1, 2)]
    by_name = {run.name: run for run in runs}
    # parity: our dense decoder gives the official dense surface, face for face
    assert by_name["ours-dense-B1"].faces == by_name[REFERENCE].faces == (4136, 3956)
    for run in runs:
        assert run.s_per_job > 0 and sum(run.stage_s_per_job.values()) <= run.s_per_job * 1.01

    summary = summarize(args.cases[0], runs)
    assert summary.ours_best is not None and summary.ratio is not None and summary.ratio > 0
    report = markdown_report(
        args, "vs_official.py --quick", {"cpu": "test cpu"}, [(args.cases[0], runs)], _now(), ["Machine busy"]
    )
    assert "**Machine busy**" in report
    assert "**QUICK SMOKE RUN (--quick): a tiny case to check the script runs; not a measurement.**" in report
    assert "- cpu: test cpu" in report
    assert "parity: ours-dense-B1 faces vs official-dense faces: equal" in report
    assert summary_line(summary) in report


def test_measure_case_alternates_the_official_decoder_order_and_keeps_one_row_per_variant(
    tiny_pipeline: ShapePipeline,
):
    args = parse_args(["--quick", "--repeats", "2", "--our-decoders", "dense", "--batch-size", "1"])
    asked: list[list[str]] = []
    runs, _ = measure_case(tiny_pipeline, args, args.cases[0], _job_images(args), _recorded_official(asked))
    assert asked == [["dense", "flashvdm"], ["flashvdm", "dense"]]
    assert [run.name for run in runs] == [REFERENCE, "official-flashvdm", "ours-dense-B1"]


def _now() -> Any:
    import datetime

    return datetime.datetime(2026, 12, 1, tzinfo=datetime.timezone.utc)
